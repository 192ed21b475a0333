"""What a workdir records of its run besides checkpoints: the config it ran
with (and the earlier ones, when a resume changed it), and logs of one row
per step.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
from pathlib import Path
from typing import Any

from lmdvit_jax import files

CONFIG_FILE = 'config.json'
# What a resumed run may change without asking: how often it logs, saves and
# evaluates, how it reads its data, how its processes start. Not what it computes.
FREE_ON_RESUME = (
  'log_every_steps',
  'checkpoint_every_steps',
  'keep_checkpoints',
  'eval_every_steps',
  'eval.',
  'data.num_threads',
  'data.worker_count',
  'distributed',
  'init_from',
)


def _flatten_config(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten_config(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def record_config(
  workdir: str | Path,
  config: Mapping[str, Any],
  trained_to: int | None,
  allow_change: bool = False,
  write: bool = True,
) -> list[str]:
  """Writes `WORKDIR/config.json`; when resuming a run, first compares it
  with the config recorded there.

  `num_train_steps` may change freely when the learning-rate schedule does
  not depend on it (`optim.restart_every` > 0), as may `FREE_ON_RESUME`;
  any other change is refused unless `allow_change`. Whatever changed, the
  earlier config is kept as `config.STEP.json`.

  Args:
    config: the run's config as JSON (`json.loads(config.to_json())`).
    trained_to: the step the workdir's newest checkpoint holds (None: a new run).
    write: write the files (process 0 only, on a pod).

  Returns:
    The changes, one 'key: old -> new' each.

  Raises:
    ValueError: naming the changes, with the flag that accepts them.
  """
  path = Path(workdir) / CONFIG_FILE
  changes = []
  if trained_to is not None and path.is_file():
    before, after = _flatten_config(json.loads(path.read_text())), _flatten_config(config)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    schedule_free = int(after.get('optim.restart_every', 0) or 0) > 0
    binding = [
      k
      for k in changed
      if not k.startswith(FREE_ON_RESUME) and not (k == 'num_train_steps' and schedule_free)
    ]
    changes = [f'{k}: {before.get(k, "(none)")!r} -> {after.get(k, "(none)")!r}' for k in changed]
    if binding and not allow_change:
      shown = '; '.join(c for c, k in zip(changes, changed) if k in binding)
      raise ValueError(
        f'{workdir} holds a run trained to step {trained_to} with another config '
        f'({shown}); rerun with --allow_config_change to go on with the new '
        f'settings (config.{trained_to}.json keeps the earlier ones), or give '
        'another --workdir'
      )
    if changes and write:
      files.write_json_atomic(
        path.with_name(f'config.{trained_to}.json'), json.loads(path.read_text())
      )
  if write:
    files.write_json_atomic(path, config)
  return changes


def drop_rows_after(path: Path, step: int) -> None:
  """Rewrites a JSON-lines log without its rows past `step` (atomically)."""
  if not path.is_file():
    return
  lines = path.read_text().splitlines()
  kept = [l for l in lines if l.strip() and json.loads(l).get('step', 0) <= step]
  if len(kept) != len(lines):
    files.write_bytes_atomic(path, ''.join(l + '\n' for l in kept).encode())
