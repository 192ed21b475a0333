"""Evaluation: the paper's image metrics, pruning scores and the Table 1 row.

`run` scores a `Deblurrer` on samples; it is the one evaluator, used by
training (held-out evaluation), `evaluate.py` and the demo. `evaluate` wraps it
for a checkpoint directory and a data spec and writes OUT/metrics.json,
OUT/table.md and panels.

Scoring follows the official evaluation: the input is zero-padded, centred, to
multiples of 16 windows, the output cropped back and clamped; by default it is
also quantised to uint8 (as a saved result would be; `quantize_output=False`
scores the float output as the official script does, about 0.02 dB apart)
before PSNR, SSIM and their blur-mask-weighted forms are computed against the
ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from lmdvit_jax import files, image_io, metrics, panels
from lmdvit_jax.data import DataError, open_source
from lmdvit_jax.inference import Deblurrer, DeblurResult
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import count_params
from lmdvit_jax.results_table import table_markdown

IMAGE_METRICS = ('psnr', 'ssim', 'wpsnr', 'wssim', 'sharp_psnr')


def _float(x: Any) -> float:
  return float(np.asarray(x).reshape(()))


def image_scores(pred: np.ndarray, sharp: np.ndarray, mask: np.ndarray) -> dict[str, float]:
  """PSNR, SSIM, weighted PSNR/SSIM and sharp-region PSNR of one image.

  Args:
    pred: [H, W, 3] float32 in [0, 1] (already quantised).
    sharp: [H, W, 3] ground truth.
    mask: [H, W, 1] blur mask in {0, 1}.
  """
  return {
    'psnr': _float(metrics.psnr(pred, sharp)),
    'ssim': _float(metrics.ssim(pred, sharp)),
    'wpsnr': _float(metrics.weighted_psnr(pred, sharp, mask)),
    'wssim': _float(metrics.weighted_ssim(pred, sharp, mask)),
    'sharp_psnr': _float(metrics.sharp_psnr(pred, sharp, mask)),
  }


def pruning_scores(result: DeblurResult, mask: np.ndarray) -> dict[str, np.ndarray]:
  """Per predicting block precision, recall, accuracy, kept fraction: [n_blocks] each.

  Scored on the padded canvas with the padding excluded (`valid`).
  """
  g = result.geometry
  out = metrics.pruning_metrics(
    [d[None] for d in result.decisions],
    g.pad(mask)[None],
    g.valid()[None],
    shifted=[b.shifted for b in result.blocks],
  )
  return {k: np.asarray(v[0], np.float64) for k, v in out.items()}


def nanmean(values: Iterable[float]) -> float:
  """Mean of the finite values that are not NaN (NaN if there are none)."""
  a = np.asarray(list(values), np.float64)
  a = a[~np.isnan(a)]
  return float(a.mean()) if a.size else float('nan')


def safe_name(name: str) -> str:
  return name.replace('\\', '/').strip('/').replace('/', '__') or 'image'


def check_source(source: Any, count: int = 0) -> tuple[list[int], list[str]]:
  """Opens and validates the first `count` examples (0: all) of a data `Source`.

  Returns:
    (indices of the good examples, one message per bad file naming it).
  """
  count = len(source) if count <= 0 else min(count, len(source))
  good, bad = [], []
  for i in range(count):
    try:
      example = source.example(i) if hasattr(source, 'example') else source[i]
      for key in ('blur', 'sharp', 'mask'):
        if not np.isfinite(np.asarray(example[key], np.float32)).all():
          raise DataError(f'{example.get("name", i)}: {key} holds NaN or infinite values')
      good.append(i)
    except DataError as e:
      bad.append(str(e))
  return good, bad


def run(
  deblurrer: Deblurrer,
  source: Sequence[Mapping[str, Any]],
  *,
  count: int = 0,
  indices: Sequence[int] | None = None,
  quantize_output: bool = True,
  num_panels: int = 0,
  panel_dir: str | Path | None = None,
  panel_height: int = 192,
  image_dir: str | Path | None = None,
  keep: int = 0,
  progress: bool = False,
) -> dict[str, Any]:
  """Scores `deblurrer` on samples ({'blur', 'sharp', 'mask', 'name'}).

  The one evaluator of the project: `train.py` (held-out evaluation during
  training), `evaluate.py` and the demo all call it.

  Args:
    deblurrer: model and params (its capacity and threshold as set).
    source: indexable samples of any sizes (a data `Source` or a list).
    count: score the first `count` samples (0: all).
    indices: score these samples instead (e.g. the good ones of `check_source`).
    quantize_output: score the output as its uint8 file would hold it.
    num_panels: write panels for the first N images into `panel_dir`.
    panel_dir, panel_height: where and how tall.
    image_dir: write the restored images as PNG there (None: do not).
    keep: hand back the first `keep` images as scored (for a picture).
    progress: show a progress bar.

  Returns:
    {'count', 'mean', 'blocks', 'images', 'sizes', 'images_without_blur',
    'shown'}: means over images (NaN skipped: e.g. pruning precision and
    recall of an image without blurred pixels), per predicting block pruning
    scores, per image records, the image sizes seen, how many images had no
    blur, and for the first `keep` images their sample, the scored output
    `pred` and `kept_maps` (per block, [H, W] bool).
  """
  if indices is None:
    indices = range(len(source) if count <= 0 else min(count, len(source)))
  images: list[dict[str, Any]] = []
  sizes: dict[str, dict[str, Any]] = {}
  shown: list[dict[str, Any]] = []
  bar = tqdm(indices, desc='evaluate', unit='img', disable=not progress)
  for n, i in enumerate(bar):
    sample = source[i]
    blur, sharp, mask = sample['blur'], sample['sharp'], sample['mask']
    result = deblurrer(blur)
    pred = image_io.quantize(result.restored) if quantize_output else result.restored
    record: dict[str, Any] = {
      'name': sample.get('name', f'image_{i:06d}'),
      'height': blur.shape[0],
      'width': blur.shape[1],
    }
    record.update(image_scores(pred, sharp, mask))
    record.update({f'input_{k}': v for k, v in image_scores(blur, sharp, mask).items()})
    prune = pruning_scores(result, mask)
    record.update(
      mask_fraction=float(np.mean(mask)),
      prune_precision=nanmean(prune['precision']),
      prune_recall=nanmean(prune['recall']),
      prune_accuracy=nanmean(prune['accuracy']),
      kept_fraction=nanmean(prune['kept_fraction']),
      dropped_windows=int(sum(result.dropped)),
      seconds=result.seconds,
      flops=result.flops,
      blocks={k: v.tolist() for k, v in prune.items()},
    )
    images.append(record)
    key = f'{blur.shape[0]}x{blur.shape[1]}'
    g = result.geometry
    sizes.setdefault(
      key,
      {
        'count': 0,
        'padded': f'{g.padded_height}x{g.padded_width}',
        'flops': result.flops,
        'tiles': result.tiles.describe() if result.tiles else 'whole',
      },
    )['count'] += 1
    bar.set_postfix(psnr=f'{record["psnr"]:.2f}', wpsnr=f'{record["wpsnr"]:.2f}')

    if n < keep:
      shown.append({'sample': sample, 'pred': pred, 'kept_maps': result.kept_maps()})
    if n < num_panels and panel_dir is not None:
      picture = panels.evaluation_panel(blur, pred, sharp, mask, result, panel_height)
      image_io.save_png(
        Path(panel_dir) / f'{n:03d}_{safe_name(record["name"])}.png', picture, compress_level=6
      )
    if image_dir is not None:
      image_io.save_png(
        Path(image_dir) / f'{safe_name(record["name"])}.png',
        Image.fromarray(image_io.to_uint8(pred)),
      )

  mean = {
    k: nanmean(r[k] for r in images)
    for k in IMAGE_METRICS
    + tuple(f'input_{k}' for k in IMAGE_METRICS)
    + (
      'prune_precision',
      'prune_recall',
      'prune_accuracy',
      'kept_fraction',
      'flops',
      'mask_fraction',
    )
  }
  mean['seconds_per_image'] = nanmean(r['seconds'] for r in images)
  mean['dropped_windows'] = nanmean(r['dropped_windows'] for r in images)
  blocks = []
  for j, b in enumerate(deblurrer.blocks):
    entry = {'stage': b.stage, 'block': b.block, 'shifted': b.shifted}
    entry.update(
      {
        k: nanmean(r['blocks'][k][j] for r in images)
        for k in ('precision', 'recall', 'accuracy', 'kept_fraction')
      }
    )
    blocks.append(entry)
  # Images without blurred pixels have no pruning precision or recall: left
  # out of those means, and counted.
  without_blur = sum(1 for r in images if not r['mask_fraction'] > 0)
  return {
    'count': len(images),
    'mean': mean,
    'blocks': blocks,
    'images': images,
    'sizes': sizes,
    'images_without_blur': without_blur,
    'shown': shown,
  }


def evaluate(
  checkpoint: str,
  data: str,
  output: str,
  settings: InferenceSettings | None = None,
  *,
  step: int | None = None,
  split: str = 'test',
  num_panels: int = 4,
  panel_height: int = 192,
  max_images: int = 0,
  save_images: bool = False,
  warmup: bool = True,
  quantize_output: bool = True,
  skip_bad: bool = False,
  keep: int = 0,
  progress: bool = True,
  deblurrer: Deblurrer | None = None,
) -> dict[str, Any]:
  """Evaluates a checkpoint directory on a data spec; writes metrics.json,
  table.md and panels under `output`.

  `settings` (capacity, keep threshold, dtype, self-ensemble, tiling...)
  default to the checkpoint's model.json and inference.json. `deblurrer`: the
  checkpoint already loaded, under its settings (the demo scores two sets
  with one: each image size compiles and warms up once); `settings`, `step`
  and `warmup` are then its own.

  Every file is opened and validated first (keys, dtypes, sizes, finite
  values): a bad one stops the run before any forward pass, with one message
  listing every bad file; with `skip_bad` they are left out and listed under
  'skipped' in metrics.json instead.

  Returns:
    The summary written to OUT/metrics.json (before NaN -> null), with
    `shown`: the first `keep` images as `run` hands them back (not written).

  Raises:
    ValueError: bad data spec or settings. FileNotFoundError: missing folders.
    DataError: unreadable or inconsistent data files.
  """
  out_dir = Path(output)
  if num_panels < 0 or max_images < 0:
    raise ValueError(
      f'--num_panels and --max_images must be >= 0, got {num_panels} and {max_images}'
    )
  if num_panels and panel_height < panels.MIN_TILE_HEIGHT:
    raise ValueError(
      f'--panel_height must be at least {panels.MIN_TILE_HEIGHT} pixels, got {panel_height}'
    )
  if not Path(checkpoint).is_dir():
    raise FileNotFoundError(f'checkpoint directory not found: {checkpoint}')
  source = open_source(data, split=split)
  if deblurrer is None:
    # Loading the model checks the tiling settings against its grid before any data is read.
    deblurrer = Deblurrer.for_command(checkpoint, step, settings, warmup=warmup, progress=progress)
  elif settings is not None or step is not None:
    raise ValueError('evaluate takes settings and a step, or a loaded deblurrer: not both')
  files.check_writable_dir(out_dir)  # before minutes of evaluation, not after
  good, bad = check_source(source, max_images)
  if bad and not skip_bad:
    raise DataError(
      f'{len(bad)} bad file(s), nothing evaluated (--skip_bad leaves them out): ' + ' | '.join(bad)
    )
  if not good:
    raise DataError(f'no usable images in {data}')
  out_dir.mkdir(parents=True, exist_ok=True)
  scored = run(
    deblurrer,
    source,
    indices=good,
    quantize_output=quantize_output,
    num_panels=num_panels,
    panel_dir=out_dir / 'panels',
    panel_height=panel_height,
    image_dir=out_dir / 'images' if save_images else None,
    keep=keep,
    progress=progress,
  )
  model = deblurrer.model
  device = jax.devices()[0]
  summary = {
    'checkpoint': str(checkpoint),
    'data': data,
    'split': split,
    'count': scored['count'],
    'quantized': quantize_output,
    'model': model.describe(),
    'self_ensemble': deblurrer.self_ensemble,
    'matmul_precision': deblurrer.matmul_precision,
    'tiling': {
      'tile': deblurrer.tile,
      'tile_overlap': deblurrer.tile_overlap,
      'max_memory': deblurrer.max_memory,
    },
    'params': count_params(deblurrer.params),
    'device': f'{device.platform} ({device.device_kind}) x{jax.device_count()}',
    'sizes': scored['sizes'],
    'mean': scored['mean'],
    'blocks': scored['blocks'],
    'images': scored['images'],
    'skipped': bad,
    'images_without_blur': scored['images_without_blur'],
  }
  files.write_json_atomic(out_dir / 'metrics.json', summary)
  files.write_bytes_atomic(out_dir / 'table.md', table_markdown(summary).encode())
  return {**summary, 'shown': scored['shown']}
