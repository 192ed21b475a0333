"""Checkpoint directories: model keyword arguments beside orbax-saved params.

One layout serves converted weights and training runs alike:

    DIR/model.json                   LMDViT keyword arguments
    DIR/inference.json               optional: how to run it (`self_ensemble`)
    DIR/checkpoints/<step>/params/   orbax PyTree checkpoint of the params
    DIR/checkpoints/<step>/...       further items written by training

so `load_model(DIR)` works on the output of `python -m lmdvit_jax.convert` and
on a `train.py` workdir. Orbax writes each step to a temporary folder and
renames it when complete; `model.json` is replaced atomically.

A training step folder holds four items (see `TRAIN_ITEMS`):

    params/      the params pytree (what `load_model` reads)
    opt_state/   the optax state
    meta/        step, base rng key, count of skipped (non-finite) steps
    data/        the data iterator position (JSON), for an exact resume

`train.py` also keeps `WORKDIR/best/`, a checkpoint directory of the same
layout (model.json + checkpoints/<step>/params) holding only the params with
the best held-out weighted PSNR so far, and `WORKDIR/best/best.json` with its
step and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import logging as logging_lib
from pathlib import Path
import shutil
import sys
import traceback
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from lmdvit_jax.errors import CheckpointError
from lmdvit_jax.files import jsonable, write_json_atomic
from lmdvit_jax.inference_settings import RECORDED

MODEL_FILE = 'model.json'
INFERENCE_FILE = 'inference.json'
INFERENCE_KEYS = RECORDED  # What inference.json may hold: `InferenceSettings` says.
CHECKPOINTS = 'checkpoints'
TRAIN_ITEMS = ('params', 'opt_state', 'meta', 'data')
BEST_DIR = 'best'
BEST_FILE = 'best.json'


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


class _AbandonedReads:
  """Drops what the abandoned reads of a damaged step print.

  When one array of a damaged step fails, orbax gives the step up while its
  other reads are still in flight. Each of them, finishing later, prints a
  traceback: 'Event loop is closed' through `sys.unraisablehook` (orbax has
  closed the loop meanwhile), or, through asyncio's logger, 'Future exception
  was never retrieved' with that read's own error; hundreds for a train
  state. Only those are dropped: closed-loop errors, asyncio records that
  name a step being tried, and, from the first restore tried on, asyncio's
  never-retrieved errors raised inside orbax (an abandoned read can be
  collected before its restore's error reaches the caller).
  """

  CLOSED = 'Event loop is closed'

  def __init__(self):
    self.steps: set[str] = set()
    self.tried = False
    self._installed = False

  def install(self) -> None:
    if self._installed:
      return
    previous = sys.unraisablehook

    def hook(unraisable):
      if not self._closed_loop(unraisable.exc_value):
        previous(unraisable)

    sys.unraisablehook = hook
    logging_lib.getLogger('asyncio').addFilter(self._keep)
    self._installed = True

  def _closed_loop(self, error: BaseException | None) -> bool:
    return isinstance(error, RuntimeError) and str(error) == self.CLOSED

  def _keep(self, record: logging_lib.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    text = f'{record.getMessage()} {error}'
    in_orbax = (
      self.tried
      and 'never retrieved' in text
      and any(
        '/orbax/' in frame.filename for frame in traceback.extract_tb(error.__traceback__ or None)
      )
      if error is not None
      else False
    )
    return not (
      self._closed_loop(error)
      or self.CLOSED in text
      or in_orbax
      or any(step in text for step in self.steps)
    )


_ABANDONED = _AbandonedReads()


def restore_newest_intact(steps, restore, directory: str | Path):
  """`(step, restore(step))` for the newest step whose restore succeeds.

  A damaged step (truncated or missing data files, unreadable metadata) is
  skipped with a warning naming it and the reason; only when every step fails
  does this raise `CheckpointError`, one line naming the directory.
  """
  from absl import logging

  skipped = []
  _ABANDONED.install()
  for step in sorted(steps, reverse=True):
    # `directory` is a workdir or its checkpoints/ folder: the step's files lie in either.
    _ABANDONED.steps.update(
      f'{folder / str(step)}/'
      for folder in (Path(directory).absolute(), Path(directory).absolute() / CHECKPOINTS)
    )
    _ABANDONED.tried = True  # before the restore: see _AbandonedReads
    try:
      return step, restore(step)
    except Exception as e:  # orbax/tensorstore raise many kinds
      skipped.append(f'step {step} ({_first_line(e)})')
      logging.warning(
        'Skipping damaged checkpoint step %d in %s: %s', step, directory, _first_line(e)
      )
  if not skipped:
    raise CheckpointError(f'no checkpoint steps in {directory}')
  raise CheckpointError(f'no intact checkpoint in {directory}: ' + '; '.join(skipped))


def manager(
  directory: str | Path,
  max_to_keep: int | None = None,
  item_names: tuple[str, ...] = ('params',),
  async_save: bool = False,
) -> ocp.CheckpointManager:
  """The orbax manager of `directory/checkpoints`.

  `async_save=True` returns from `save` once the arrays are copied to the
  host and writes in a background thread (call `wait_until_finished` or
  `close`).
  """
  path = Path(directory).absolute() / CHECKPOINTS
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
  )
  return ocp.CheckpointManager(path, item_names=item_names, options=options)


def write_model_json(directory: str | Path, model_kwargs: Mapping[str, Any]) -> None:
  """Writes `directory/model.json` (from process 0 only in multi-host runs)."""
  if jax.process_index() == 0:
    write_json_atomic(Path(directory) / MODEL_FILE, model_kwargs)


def check_model_kwargs(directory: str | Path, model_kwargs: Mapping[str, Any]) -> None:
  """Raises ValueError if `directory/model.json` exists and records other kwargs."""
  path = Path(directory) / MODEL_FILE
  if not path.is_file():
    return
  recorded = read_model_kwargs(directory)
  wanted = jsonable(model_kwargs)
  if recorded != wanted:
    diff = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    details = ', '.join(f'{k}: {recorded.get(k)!r} there, {wanted.get(k)!r} now' for k in diff)
    raise ValueError(f'{path} records a different model ({details}); use a new workdir')


def save_model(
  directory: str | Path,
  params: Any,
  model_kwargs: Mapping[str, Any],
  step: int = 0,
  max_to_keep: int | None = None,
) -> Path:
  """Writes `model.json` and the params as step `step` under `directory`.

  `max_to_keep` limits the number of step folders kept (oldest removed).
  """
  directory = Path(directory)
  write_model_json(directory, model_kwargs)
  with manager(directory, max_to_keep=max_to_keep) as mngr:
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
    raise FileNotFoundError(
      f'{path} not found: {directory} is not an lmdvit-jax checkpoint directory{hint}'
    )
  with open(path) as f:
    return json.load(f)


def read_inference_settings(directory: str | Path) -> dict[str, Any]:
  """`inference.json` of a checkpoint directory ({} where there is none):
  settings of `inference.Deblurrer` that are not `LMDViT` arguments."""
  path = Path(directory) / INFERENCE_FILE
  if not path.is_file():
    return {}
  with open(path) as f:
    settings = json.load(f)
  if not isinstance(settings, dict):
    raise ValueError(f'{path} must hold a JSON object, got {type(settings).__name__}')
  unknown = sorted(set(settings) - set(INFERENCE_KEYS))
  if unknown:
    raise ValueError(f'{path}: unknown settings {unknown}; known: {list(INFERENCE_KEYS)}')
  return settings


def write_inference_settings(directory: str | Path, settings: Mapping[str, Any]) -> None:
  """Writes `directory/inference.json` (see `read_inference_settings`)."""
  unknown = sorted(set(settings) - set(INFERENCE_KEYS))
  if unknown:
    raise ValueError(f'unknown inference settings {unknown}; known: {list(INFERENCE_KEYS)}')
  write_json_atomic(Path(directory) / INFERENCE_FILE, settings)


def all_steps(directory: str | Path) -> list[int]:
  """The complete steps under `directory/checkpoints` (orbax renames a step
  folder to its number only once it is fully written)."""
  path = Path(directory) / CHECKPOINTS
  if not path.is_dir():
    return []
  return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


def latest_step(directory: str | Path) -> int | None:
  """The newest complete step under `directory/checkpoints`, or None."""
  steps = all_steps(directory)
  return steps[-1] if steps else None


def load_model(directory: str | Path, step: int | None = None) -> tuple[dict[str, Any], Any]:
  """Reads `(model_kwargs, params)` from a checkpoint directory.

  Args:
    directory: written by `save_model`, `python -m lmdvit_jax.convert` or `train.py`.
    step: which step; the newest by default.

  Returns:
    The `LMDViT` keyword arguments and the params pytree (host arrays).
  """
  kwargs = read_model_kwargs(directory)
  steps = all_steps(directory)
  if not steps:
    raise FileNotFoundError(f'no checkpoint steps under {Path(directory) / CHECKPOINTS}')
  if step is not None:
    if step not in steps:
      shown = ', '.join(map(str, steps[-10:])) + (' (the newest 10)' if len(steps) > 10 else '')
      raise CheckpointError(f'no checkpoint at step {step} in {directory}; steps: {shown}')
    steps = [step]
  with manager(directory) as mngr:

    def restore(s):
      # Onto this process's first device, whatever devices saved it (a run
      # on two processes or eight GPUs is read back on one CPU).
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      # The handler reads the item's own metadata; a Checkpointer would look
      # for step metadata in the item folder and log a warning per load.
      handler = ocp.StandardCheckpointHandler()
      try:
        metadata = handler.metadata(Path(mngr.directory) / str(s) / 'params')
      finally:
        handler.close()
      # Orbax versions differ in how they wrap the tree of array metadata.
      metadata = getattr(metadata, 'item_metadata', metadata)
      target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        getattr(metadata, 'tree', metadata),
      )
      out = mngr.restore(s, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
      return jax.tree_util.tree_map(np.asarray, out['params'])

    _, params = restore_newest_intact(steps, restore, directory)
  return kwargs, params


# ---------------------------------------------------------------------------
# Training state.


def train_manager(
  workdir: str | Path, max_to_keep: int | None = None, async_save: bool = True
) -> ocp.CheckpointManager:
  """The manager of a training workdir: items `TRAIN_ITEMS` per step."""
  return manager(workdir, max_to_keep=max_to_keep, item_names=TRAIN_ITEMS, async_save=async_save)


def save_train_state(
  mngr: ocp.CheckpointManager,
  state: Any,
  data_state: Mapping[str, Any] | None = None,
  step: int | None = None,
) -> int:
  """Saves a `train_lib.TrainState` (and iterator position) at its step.

  `step`, when the caller knows it, saves reading `state.step` back from the
  devices. Returns the step. Arrays may be sharded across processes; orbax
  writes each shard once, in the background (`mngr` saves asynchronously).
  """
  if step is None:
    step = int(jax.device_get(state.step))
  meta = {'step': state.step, 'rng': state.rng, 'skipped': state.skipped}
  mngr.save(
    step,
    args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state),
      meta=ocp.args.StandardSave(meta),
      data=ocp.args.JsonSave(dict(data_state or {})),
    ),
    force=True,
  )
  return step


def restore_train_state(
  mngr: ocp.CheckpointManager, target: Any, step: int | None = None
) -> tuple[Any, dict[str, Any]]:
  """Restores `(state, data_state)` from step `step` (default: the latest).

  Args:
    mngr: from `train_manager`.
    target: a `train_lib.TrainState` of arrays (or `jax.ShapeDtypeStruct`s
      with shardings) giving the structure, dtypes and shardings to restore.
    step: which step.
  """
  steps = [step] if step is not None else list(mngr.all_steps())
  if not steps:
    raise FileNotFoundError(f'no checkpoint under {mngr.directory}')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  meta = {'step': abstract.step, 'rng': abstract.rng, 'skipped': abstract.skipped}

  def restore(s):
    return mngr.restore(
      s,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract.params),
        opt_state=ocp.args.StandardRestore(abstract.opt_state),
        meta=ocp.args.StandardRestore(meta),
        data=ocp.args.JsonRestore(),
      ),
    )

  _, restored = restore_newest_intact(steps, restore, mngr.directory)
  m = restored['meta']
  state = type(target)(
    step=m['step'],
    params=restored['params'],
    opt_state=restored['opt_state'],
    rng=m['rng'],
    skipped=m['skipped'],
  )
  return state, dict(restored['data'] or {})


def set_aside_steps_after(directory: str | Path, step: int) -> list[Path]:
  """Renames step folders newer than `step` to `<step>.damaged` (kept, not deleted).

  After a restore fell back past damaged steps, the run saves those step
  numbers again; the damaged folders must not stand in the way, and nothing
  is thrown away.

  Returns:
    The new paths of the folders set aside.
  """
  moved = []
  for s in all_steps(directory):
    if s > step:
      src = Path(directory) / CHECKPOINTS / str(s)
      dst = src.with_name(f'{s}.damaged')
      n = 1
      while dst.exists():
        n += 1
        dst = src.with_name(f'{s}.damaged{n}')
      src.rename(dst)
      moved.append(dst)
  return moved


def read_best(directory: str | Path) -> dict[str, Any] | None:
  """`WORKDIR/best/best.json` ({'step', 'wpsnr', 'metrics'}), or None."""
  path = Path(directory) / BEST_DIR / BEST_FILE
  if not path.is_file():
    return None
  with open(path) as f:
    return json.load(f)


def save_best(
  workdir: str | Path,
  params: Any,
  model_kwargs: Mapping[str, Any],
  step: int,
  metrics: Mapping[str, float],
  key: str = 'wpsnr',
) -> bool:
  """Keeps `params` in `WORKDIR/best` if `metrics[key]` beats the recorded best.

  Returns whether it saved. NaN never counts as better.
  """
  value = float(metrics.get(key, float('nan')))
  best = read_best(workdir)
  if not np.isfinite(value) or (best is not None and not value > best[key]):
    return False
  directory = Path(workdir) / BEST_DIR
  stale = directory / CHECKPOINTS / str(step)
  if stale.is_dir():  # saved before this run resumed from an earlier step: replace it
    if jax.process_index() == 0:
      shutil.rmtree(stale)
    multihost_utils.sync_global_devices(f'lmdvit_jax best {step}')
  save_model(directory, params, model_kwargs, step=step, max_to_keep=1)
  if jax.process_index() == 0:
    write_json_atomic(
      directory / BEST_FILE, {'step': int(step), key: value, 'metrics': dict(metrics)}
    )
  return True
