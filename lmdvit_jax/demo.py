"""The demo: a small LMD-ViT on synthetic local motion blur, scored on held-out photos.

`run(config, workdir)` puts a model in `workdir` and scores it on the held-out
set of `config.demo.data`:

* by default it installs the shipped demo weights (`shipped_weights`, trained
  by `python demo.py --train` with `configs/demo.py`; the command, the seed
  and the training log lie beside them) as a checkpoint directory, in seconds;
* with `train=True` it trains from scratch with `training.train_and_evaluate`
  (resuming if the workdir already holds checkpoints).

Then it evaluates with `evaluation.evaluate` (capacity `'exact'`), prints a
per-image table and the demo's targets, and writes WORKDIR/demo_eval/
(metrics.json, table.md, panels/, summary.json, overview.png).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
import time
from typing import Any

import ml_collections
import numpy as np

from lmdvit_jax import checkpointing, evaluation, files, image_io, panels
from lmdvit_jax.calibration import calibrate_keep_threshold
from lmdvit_jax.inference import Deblurrer
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.shipped_weights import (
  OVERRIDES_FILE,
  WEIGHTS_DIR,
  export_weights,
  install_weights,
  write_training_record,
)

# (metric key, label, requirement, threshold): what the demo must show on its
# held-out set. Gains are over the blurred input scored the same way.
TARGETS = (
  ('wpsnr_gain', 'weighted PSNR gain inside the blur mask (dB)', '>= 1.0', 1.0),
  ('psnr_gain', 'whole-image PSNR gain (dB)', '>= 0.3', 0.3),
  ('sharp_psnr', 'PSNR outside the blur mask (dB)', '>= 45', 45.0),
  ('prune_recall', 'pruning recall of blurred pixels', '>= 0.9', 0.9),
  ('prune_precision', 'pruning precision', '>= 0.6', 0.6),
)


def targets(mean: dict[str, float]) -> list[dict[str, Any]]:
  """Each target with its measured value and whether it is met."""
  values = dict(
    mean,
    wpsnr_gain=mean['wpsnr'] - mean['input_wpsnr'],
    psnr_gain=mean['psnr'] - mean['input_psnr'],
  )
  rows = []
  for key, name, requirement, threshold in TARGETS:
    value = float(values[key])
    rows.append(
      dict(
        name=name,
        value=value,
        requirement=requirement,
        met=bool(np.isfinite(value) and value >= threshold),
      )
    )
  return rows


# ---------------------------------------------------------------------------
# The picture.


def _zoom_box(mask: np.ndarray, pad: int = 12) -> tuple[slice, slice]:
  """The blurred region's bounding box, padded (the whole image if no blur)."""
  m = np.asarray(mask).reshape(mask.shape[:2]) > 0
  if not m.any():
    return slice(None), slice(None)
  ys, xs = np.nonzero(m)
  h, w = m.shape
  return (
    slice(max(0, ys.min() - pad), min(h, ys.max() + pad + 1)),
    slice(max(0, xs.min() - pad), min(w, xs.max() + pad + 1)),
  )


def overview(
  samples: list[dict[str, np.ndarray]],
  restored: list[np.ndarray],
  kept: list[np.ndarray],
  records: list[dict[str, Any]],
  tile_height: int = 160,
):
  """One row per image: input, output and ground truth zoomed on the blurred
  region (labelled with weighted PSNR), then the windows the last pruning block
  kept over the whole image."""
  tiles = []
  for s, pred, k, r in zip(samples, restored, kept, records):
    box = _zoom_box(s['mask'])
    tiles += [
      (f'input {r["input_wpsnr"]:.2f} dB', s['blur'][box]),
      (f'output {r["wpsnr"]:.2f} dB', pred[box]),
      ('ground truth', s['sharp'][box]),
      (
        f'kept {100 * r["kept_fraction"]:.0f}% (mask {100 * r["mask_fraction"]:.0f}%)',
        panels.mask_overlay(s['blur'], s['mask']) * 0.4 + 0.6 * panels.kept_overlay(s['blur'], k),
      ),
    ]
  return panels.grid(tiles, tile_height, columns=4)


# ---------------------------------------------------------------------------
# The run.


def run(
  config: ml_collections.ConfigDict,
  workdir: str | Path,
  *,
  train: bool = False,
  export: bool = False,
  weights_dir: str | Path = WEIGHTS_DIR,
  progress: bool = True,
  overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Trains (or installs the shipped weights), evaluates and reports.

  With `export`, the workdir's model (trained here or already there) then
  replaces the shipped weights in `weights_dir`, with its training log.
  `overrides` (flat `{'optim.lr': 2e-4, ...}`: what the command line changed
  in the config file) are kept in the workdir when training, so that an export
  can write the training command down whole.

  Returns:
    The summary written to WORKDIR/demo_eval/summary.json.
  """
  workdir = Path(workdir)
  start = time.perf_counter()
  if train:
    from lmdvit_jax import training

    workdir.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(workdir / OVERRIDES_FILE, dict(overrides or {}))
    training.train_and_evaluate(config, workdir)
    origin = f'trained here with {config.num_train_steps} steps'
  elif checkpointing.latest_step(workdir) is None:
    install_weights(workdir, weights_dir)
    origin = f'shipped weights ({Path(weights_dir).name}/)'
  else:
    origin = f'the checkpoint already in {workdir}'
  seconds_model = time.perf_counter() - start

  self_ensemble = int(config.demo.self_ensemble)
  keep_threshold, calibration = None, None
  if export and config.demo.calibration_data:
    keep_threshold, calibration = calibrate_keep_threshold(
      workdir,
      config.demo.calibration_data,
      float(config.demo.calibration_recall),
      self_ensemble=self_ensemble,
    )
    print(
      f'Keep threshold {keep_threshold} chosen on {config.demo.calibration_data} '
      '(validation photos): '
      + '; '.join(
        f'{r["keep_threshold"]}: recall {r["recall"]:.3f} precision {r["precision"]:.3f}'
        for r in calibration
      )
    )

  out = workdir / 'demo_eval'
  n_panels = int(config.demo.num_panels)
  settings = InferenceSettings(
    capacity='exact', keep_threshold=keep_threshold, self_ensemble=self_ensemble
  )
  # One deblurrer for both sets: an image size compiles (and warms up) once.
  deblurrer = Deblurrer.for_command(workdir, None, settings, progress=progress)
  result = evaluation.evaluate(
    str(workdir),
    config.demo.data,
    str(out),
    split='test',
    num_panels=n_panels,
    keep=n_panels,
    progress=progress,
    deblurrer=deblurrer,
  )
  mean, records = result['mean'], result['images']
  rows = targets(mean)
  outside = None
  if config.demo.get('outside_data'):
    scored = evaluation.evaluate(
      str(workdir),
      config.demo.outside_data,
      str(out / 'outside'),
      num_panels=0,
      progress=progress,
      deblurrer=deblurrer,
    )
    outside = {
      'data': config.demo.outside_data,
      'count': scored['count'],
      'mean': scored['mean'],
      'targets': targets(scored['mean']),
    }

  # The overview picture: the first few images, as the evaluation scored them.
  shown = result['shown']
  if shown:
    picture = overview(
      [s['sample'] for s in shown],
      [s['pred'] for s in shown],
      [s['kept_maps'][-1] for s in shown],
      records[: len(shown)],
    )
    image_io.save_png(out / 'overview.png', picture, compress_level=6)

  summary = {
    'data': config.demo.data,
    'count': result['count'],
    'model': origin,
    'seconds_to_model': seconds_model,
    'seconds_total': time.perf_counter() - start,
    'targets': rows,
    'mean': mean,
    'outside': outside,
    'keep_threshold': (
      keep_threshold
      if keep_threshold is not None
      else checkpointing.read_model_kwargs(workdir).get('keep_threshold', 0.5)
    ),
    'self_ensemble': self_ensemble,
    'calibration': calibration,
    'kept_fraction_per_block': [b['kept_fraction'] for b in result['blocks']],
    'images': [
      {
        k: r[k]
        for k in (
          'name',
          'input_psnr',
          'psnr',
          'input_wpsnr',
          'wpsnr',
          'sharp_psnr',
          'kept_fraction',
          'prune_recall',
          'prune_precision',
          'seconds',
        )
      }
      for r in records
    ],
  }
  files.write_json_atomic(out / 'summary.json', summary)
  print(report(summary, out))
  if export:
    if not (workdir / 'metrics.jsonl').is_file():
      raise FileNotFoundError(
        f'{workdir} has no training log (metrics.jsonl): export the '
        'workdir of a `python demo.py --train` run'
      )
    export_weights(
      workdir,
      weights_dir,
      self_ensemble=self_ensemble,
      **({} if keep_threshold is None else {'keep_threshold': keep_threshold}),
    )
    write_training_record(workdir, weights_dir, summary)
    print(f'Exported the model of {workdir} to {weights_dir}')
  return summary


def _f(value: float, digits: int = 2) -> str:
  return '-' if value is None or not np.isfinite(value) else f'{value:.{digits}f}'


def report(summary: dict[str, Any], out: Path) -> str:
  """The text a person reads at the end of the demo."""
  passes = summary.get('self_ensemble', 1)
  ensemble = (
    f'; {passes} passes per image (flipped and transposed copies, averaged)' if passes > 1 else ''
  )
  lines = [
    f'\nHeld-out set: {summary["count"]} images of {summary["data"]} '
    f'(photos never seen in training); model: {summary["model"]}{ensemble}.',
    '',
    '| image | PSNR in -> out | weighted PSNR in -> out | PSNR outside mask | kept | s |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  for r in summary['images']:
    lines.append(
      f'| {r["name"]} | {_f(r["input_psnr"])} -> {_f(r["psnr"])} | '
      f'{_f(r["input_wpsnr"])} -> {_f(r["wpsnr"])} | {_f(r["sharp_psnr"])} | '
      f'{100 * r["kept_fraction"]:.0f}% | {_f(r["seconds"], 3)} |'
    )
  m = summary['mean']
  lines.append(
    f'| **mean** | {_f(m["input_psnr"])} -> {_f(m["psnr"])} | '
    f'{_f(m["input_wpsnr"])} -> {_f(m["wpsnr"])} | {_f(m["sharp_psnr"])} | '
    f'{100 * m["kept_fraction"]:.0f}% | {_f(m["seconds_per_image"], 3)} |'
  )
  lines += ['', '| target | measured | required | met |', '| --- | --- | --- | --- |']
  for t in summary['targets']:
    lines.append(
      f'| {t["name"]} | {_f(t["value"], 3)} | {t["requirement"]} | '
      f'{"PASS" if t["met"] else "FAIL"} |'
    )
  met = sum(t['met'] for t in summary['targets'])
  lines += ['', f'{met} of {len(summary["targets"])} targets met on the held-out set.']
  if summary.get('outside'):
    o, m = summary['outside'], summary['outside']['mean']
    lines += [
      '',
      f'Outside set: {o["count"]} images of {o["data"]} (other photos, shapes, '
      'motion, noise and JPEG than training): PSNR '
      f'{_f(m["input_psnr"])} -> {_f(m["psnr"])}, weighted PSNR {_f(m["input_wpsnr"])} -> '
      f'{_f(m["wpsnr"])}.',
      '',
      '| target | measured | required | met |',
      '| --- | --- | --- | --- |',
    ]
    for t in o['targets']:
      lines.append(
        f'| {t["name"]} | {_f(t["value"], 3)} | {t["requirement"]} | '
        f'{"PASS" if t["met"] else "FAIL"} |'
      )
    lines += [
      '',
      f'{sum(t["met"] for t in o["targets"])} of {len(o["targets"])} targets met '
      'on the outside set.',
    ]
  lines += [
    '',
    f'Total time {summary["seconds_total"]:.0f} s.',
    f'Picture (input | output | ground truth, zoomed on the blur; kept windows): '
    f'{out / "overview.png"}',
    f'Per-image panels and metrics: {out}',
  ]
  return '\n'.join(lines)
