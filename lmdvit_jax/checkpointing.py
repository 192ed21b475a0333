"""Checkpoint directories: model keyword arguments beside orbax-saved params.

One layout serves converted weights and training runs alike:

    DIR/model.json                   LMDViT keyword arguments
    DIR/checkpoints/<step>/params/   orbax PyTree checkpoint of the params
    DIR/checkpoints/<step>/...       further items written by training

so `load_model(DIR)` works on the output of `python -m lmdvit_jax.convert` and
on a `train.py` workdir. Orbax writes each step to a temporary folder and
renames it when complete; `model.json` is replaced atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

MODEL_FILE = 'model.json'
CHECKPOINTS = 'checkpoints'


def write_json_atomic(path: str | Path, obj: Any) -> None:
  """Writes JSON to `path` through a temporary file and a rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(obj, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def _jsonable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in kwargs.items():
    if isinstance(v, (tuple, list)):
      v = [x.item() if isinstance(x, np.generic) else x for x in v]
    elif isinstance(v, np.generic):
      v = v.item()
    out[k] = v
  return out


def manager(directory: str | Path, max_to_keep: int | None = None,
            item_names: tuple[str, ...] = ('params',)) -> ocp.CheckpointManager:
  """The orbax manager of `directory/checkpoints`."""
  path = Path(directory).absolute() / CHECKPOINTS
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(path, item_names=item_names, options=options)


def save_model(directory: str | Path, params: Any, model_kwargs: Mapping[str, Any],
               step: int = 0) -> Path:
  """Writes `model.json` and the params as step `step` under `directory`."""
  directory = Path(directory)
  write_json_atomic(directory / MODEL_FILE, _jsonable(model_kwargs))
  with manager(directory) as mngr:
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
    mngr.wait_until_finished()
  return directory


def read_model_kwargs(directory: str | Path) -> dict[str, Any]:
  """The `LMDViT` keyword arguments recorded in a checkpoint directory."""
  path = Path(directory) / MODEL_FILE
  if not path.is_file():
    hint = ''
    if Path(directory).name.isdigit() or Path(directory).name == CHECKPOINTS:
      hint = ' (pass the directory that holds model.json and checkpoints/, not a step folder)'
    raise FileNotFoundError(f'{path} not found: {directory} is not an lmdvit-jax checkpoint '
                            f'directory{hint}')
  with open(path) as f:
    return json.load(f)


def latest_step(directory: str | Path) -> int | None:
  """The newest complete step under `directory/checkpoints`, or None."""
  path = Path(directory) / CHECKPOINTS
  if not path.is_dir():
    return None
  steps = [int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
  return max(steps) if steps else None


def load_model(directory: str | Path, step: int | None = None) -> tuple[dict[str, Any], Any]:
  """Reads `(model_kwargs, params)` from a checkpoint directory.

  Args:
    directory: written by `save_model`, `python -m lmdvit_jax.convert` or `train.py`.
    step: which step; the newest by default.

  Returns:
    The `LMDViT` keyword arguments and the params pytree (host arrays).
  """
  kwargs = read_model_kwargs(directory)
  step = latest_step(directory) if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint steps under {Path(directory) / CHECKPOINTS}')
  with manager(directory) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  params = jax.tree_util.tree_map(np.asarray, restored['params'])
  return kwargs, params
