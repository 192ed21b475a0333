"""The shipped demo weights: their format, installing them as a checkpoint,
and the record of how they were made.

`lmdvit_jax/demo_weights/` holds `params.npz` (the params, float32, flattened
with '/'), `model.json` (the model's keyword arguments), `inference.json`
(how it runs) and a README.md written at export: the command that trained
them, their data, seed and steps, the held-out result and the keep-threshold
calibration.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
import re
import shlex
from typing import Any

import numpy as np

from lmdvit_jax import checkpointing, files

WEIGHTS_DIR = Path(__file__).resolve().parent / 'demo_weights'
PARAMS_FILE = 'params.npz'
# Shipped weights are these files and a README.md telling how they were made;
# run logs stay in the training workdir (the shipped runs' are in
# docs/demo_runs/). OVERRIDES_FILE, in a workdir, holds the `--config.*` flags
# of the training command (`run` writes it), which the README spells out.
OVERRIDES_FILE = 'overrides.json'
# What exports before this layout put beside the weights (an export removes them).
OLD_RECORD = ('metrics.jsonl', 'eval.jsonl', 'config.json', OVERRIDES_FILE)


def export_weights(
  checkpoint: str | Path,
  out_dir: str | Path = WEIGHTS_DIR,
  self_ensemble: int = 1,
  **overrides: Any,
) -> Path:
  """Writes a checkpoint's params as `out_dir/params.npz` beside its model.json
  (with `overrides` of the model's keyword arguments, e.g. keep_threshold) and
  an inference.json with `self_ensemble`.

  Used once to ship the demo weights: `install_weights` reads them back.
  """
  kwargs, params = checkpointing.load_model(checkpoint)
  kwargs = {**kwargs, **overrides}
  flat = {
    '/'.join(str(k.key) for k in path): np.asarray(v, np.float32) for path, v in _flatten(params)
  }
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **flat)  # type: ignore[arg-type]  # numpy's stub types kwargs as bool
  files.write_bytes_atomic(out_dir / PARAMS_FILE, buffer.getvalue())
  files.write_json_atomic(out_dir / checkpointing.MODEL_FILE, kwargs)
  checkpointing.write_inference_settings(out_dir, {'self_ensemble': int(self_ensemble)})
  return out_dir


def _flatten(params):
  import jax

  return jax.tree_util.tree_flatten_with_path(params)[0]


def load_weights(weights_dir: str | Path = WEIGHTS_DIR) -> tuple[dict[str, Any], Any]:
  """`(model_kwargs, params)` of shipped weights (model.json + params.npz)."""
  weights_dir = Path(weights_dir)
  kwargs = checkpointing.read_model_kwargs(weights_dir)
  path = weights_dir / PARAMS_FILE
  if not path.is_file():
    raise FileNotFoundError(
      f'{path} not found: the demo weights are missing; retrain them with `python demo.py --train`'
    )
  params: dict[str, Any] = {}
  with np.load(path) as data:
    for name in data.files:
      node = params
      *parents, leaf = name.split('/')
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = np.asarray(data[name], np.float32)
  return kwargs, params


def install_weights(workdir: str | Path, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
  """Makes `workdir` a checkpoint directory holding the shipped weights (and
  their inference.json)."""
  kwargs, params = load_weights(weights_dir)
  checkpointing.save_model(workdir, params, kwargs)
  checkpointing.write_inference_settings(
    workdir, checkpointing.read_inference_settings(weights_dir)
  )
  return Path(workdir)


def override_flags(workdir: str | Path) -> list[str]:
  """The `--config.KEY=VALUE` flags a training run in `workdir` was started
  with (OVERRIDES_FILE), `init_from` shown as FIRST. Workdirs trained before
  that file was kept give their seed and step count, the flags those runs used."""
  workdir = Path(workdir)
  path = workdir / OVERRIDES_FILE
  if path.is_file():
    overrides = json.loads(path.read_text())
  else:
    config = json.loads((workdir / 'config.json').read_text())
    overrides = {k: config.get(k) for k in ('init_from', 'seed', 'num_train_steps')}
    if not overrides['init_from']:
      overrides = {}
  out = []
  for key, value in sorted(overrides.items(), key=lambda kv: kv[0] != 'init_from'):
    value = 'FIRST' if key == 'init_from' and value else value
    text = (
      value if isinstance(value, str) else repr(tuple(value) if isinstance(value, list) else value)
    )
    out.append(f'--config.{key}={_shell_word(text)}')
  return out


def _shell_word(text: str) -> str:
  """`text` as one shell word: bare if safe, else in double quotes where they
  suffice (readable for tuples and data specs), else single-quoted."""
  if re.fullmatch(r'[\w.,:/@%+=-]+', text):
    return text
  return f'"{text}"' if not set(text) & set('"$`\\!') else shlex.quote(text)


def write_training_record(
  workdir: str | Path, out_dir: str | Path, summary: dict[str, Any]
) -> None:
  """Writes `out_dir/README.md` for weights exported from the training run in
  `workdir`: the command that trained it (weights it continued, `init_from`,
  shown as FIRST, never as a path of this machine), its data, seed and steps,
  and the held-out result and keep-threshold calibration at export.

  The record files older exports put beside the weights (`OLD_RECORD`, and
  `init_*` copies of earlier runs') are removed; the run's logs stay in
  `workdir`.
  """
  workdir, out_dir = Path(workdir), Path(out_dir)
  for stale in out_dir.iterdir():
    if stale.is_file() and (stale.name in OLD_RECORD or stale.name.startswith('init_')):
      stale.unlink()
  config = json.loads((workdir / 'config.json').read_text())
  sources = (config.get('data') or {}).get('sources') or []
  steps = (
    f'seed {config.get("seed")}, {config.get("num_train_steps")} steps, batch '
    f'{config.get("batch_size")} of {config.get("patch_size")}x{config.get("patch_size")} '
    'crops' + (f' of `{"`, `".join(sources)}`' if sources else '')
  )
  command = ' '.join(['python demo.py --train --workdir=WORKDIR', *override_flags(workdir)])
  model = 'The small LMD-ViT of `configs/demo.py`'
  if config.get('init_from'):
    how = (
      f'{model}, trained on synthetic local blur by the project\'s own commands, on a '
      'CPU, continuing other weights (FIRST):\n\n'
      '    python demo.py --train --workdir=FIRST ...              # the run before\n'
      f'    {command}\n'
      '    python demo.py --workdir=WORKDIR --export_weights       # scores, exports\n\n'
      f'This run: {steps}, learning-rate schedule (warmup, cosine) started anew. '
    )
  else:
    how = (
      f'{model}, trained from scratch on synthetic local blur by the project\'s own '
      'command, on a CPU:\n\n'
      f'    {command}   # trains (resumable)\n'
      '    python demo.py --workdir=WORKDIR --export_weights       # scores, exports\n\n'
      f'(`--train --export_weights` does both in one run). {steps}. '
    )
  m = summary['mean']
  files.write_bytes_atomic(
    out_dir / 'README.md',
    (
      '# Demo weights\n\n'
      + how
      + '`model.json` holds the model\'s keyword arguments, `inference.json` how it runs, '
      '`params.npz` the params (float32).\n\n'
      f'Held-out result at export ({summary["count"]} images of `{summary["data"]}`): '
      f'PSNR {m["input_psnr"]:.2f} -> {m["psnr"]:.2f} dB, weighted PSNR '
      f'{m["input_wpsnr"]:.2f} -> {m["wpsnr"]:.2f} dB, PSNR outside the mask '
      f'{m["sharp_psnr"]:.2f} dB, pruning recall {m["prune_recall"]:.3f}, precision '
      f'{m["prune_precision"]:.3f}, keep threshold {summary["keep_threshold"]}'
      + (
        ''
        if summary.get('self_ensemble', 1) == 1
        else f', with {summary["self_ensemble"]} passes per image (`self_ensemble` in '
        '`inference.json`: flipped and transposed copies, outputs averaged)'
      )
      + '.\n'
      + (
        ''
        if not summary['calibration']
        else '\nThe keep threshold was chosen at export on validation images (photos in neither '
        'the training nor the held-out split) '
        '(`calibrate_keep_threshold` in `lmdvit_jax/calibration.py`):\n\n'
        '| keep threshold | recall | precision | kept | weighted PSNR gain (dB) | '
        'whole-image PSNR gain (dB) | PSNR outside (dB) |\n'
        '| --- | --- | --- | --- | --- | --- | --- |\n'
      )
      + ''.join(
        f'| {r["keep_threshold"]} | {r["recall"]:.3f} | {r["precision"]:.3f} | '
        f'{r["kept_fraction"]:.3f} | {r["wpsnr_gain"]:+.2f} | {r["psnr_gain"]:+.2f} | '
        f'{r["sharp_psnr"]:.2f} |\n'
        for r in summary['calibration'] or []
      )
    ).encode(),
  )
