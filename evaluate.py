r"""Evaluates an LMD-ViT checkpoint at full resolution.

  python evaluate.py --checkpoint ckpt/lmdvit --data npy:ReLoBlur_test_npy --output out/

Writes OUT/metrics.json (means, per-block pruning scores, per-image metrics),
OUT/table.md (a row in the layout of the paper's Table 1) and PNG panels for
the first --num_panels images under OUT/panels/.

Scoring follows the official evaluation: the input is zero-padded, centred, to
multiples of 16 windows, the output cropped back and clamped; by default it is
also quantised to uint8 (as a saved result would be; --noquantize scores the
float output as the official script does, a difference of about 0.02 dB) before
PSNR, SSIM and their blur-mask-weighted forms are computed against the uint8
ground truth / 255.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from absl import app, flags, logging
import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from lmdvit_jax import checkpointing, metrics, panels
from lmdvit_jax.data import DataError, open_source
from lmdvit_jax.inference import Deblurrer, DeblurResult, parse_capacity, quantize, to_uint8
from lmdvit_jax.models import count_params

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Checkpoint directory (convert or train.py).')
_DATA = flags.DEFINE_string('data', None, 'Data spec: npy:FOLDER, reloblur:DIR, gopro:DIR, '
                            'pairs:DIR, synthetic[?count=N&size=S], tfds:NAME.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output folder.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: newest).')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split for reloblur/gopro/synthetic/tfds specs.')
_CAPACITY = flags.DEFINE_string('capacity', 'exact', "'exact', 'masked' or a window "
                                'fraction in (0, 1] (fixed budget).')
_KEEP_THRESHOLD = flags.DEFINE_float('keep_threshold', None, 'Override the keep '
                                     'probability threshold of the checkpoint.')
_NUM_PANELS = flags.DEFINE_integer('num_panels', 4, 'Panels for the first N images.')
_PANEL_HEIGHT = flags.DEFINE_integer('panel_height', 192, 'Tile height of the panels (pixels).')
_MAX_IMAGES = flags.DEFINE_integer('max_images', 0, 'Evaluate the first N images only (0: all).')
_SAVE_IMAGES = flags.DEFINE_bool('save_images', False, 'Write the restored images as PNG.')
_WARMUP = flags.DEFINE_bool('warmup', True, 'Run each new input size once untimed first.')
_QUANTIZE = flags.DEFINE_bool('quantize', True, 'Score the output as saved to uint8; '
                              '--noquantize scores the clamped float output as test.py does.')

# The released model in the paper's Table 1 (ReLoBlur test set, full resolution).
PAPER_ROW = ('LMD-ViT (paper, Table 1)', 35.43, 0.9288, 30.29, 0.8934, 0.56, 54.50e6, 1.485e12)

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
      [d[None] for d in result.decisions], g.pad(mask)[None], g.valid()[None],
      shifted=[b.shifted for b in result.blocks])
  return {k: np.asarray(v[0], np.float64) for k, v in out.items()}


def nanmean(values: Iterable[float]) -> float:
  """Mean of the finite values that are not NaN (NaN if there are none)."""
  a = np.asarray(list(values), np.float64)
  a = a[~np.isnan(a)]
  return float(a.mean()) if a.size else float('nan')


def _jsonable(obj: Any) -> Any:
  """NaN and infinities -> None (JSON has neither); numpy -> Python."""
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


def _safe_name(name: str) -> str:
  return name.replace('\\', '/').strip('/').replace('/', '__') or 'image'


def _fmt(value: float, digits: int) -> str:
  return '-' if value is None or not math.isfinite(value) else f'{value:.{digits}f}'


def table_markdown(summary: Mapping[str, Any]) -> str:
  """Table 1 layout: Method | PSNR | SSIM | PSNR_w | SSIM_w | Time | Params | FLOPs."""
  m = summary['mean']
  head = ('| Method | PSNR | SSIM | PSNR_w | SSIM_w | Time | Params | FLOPs |\n'
          '| --- | --- | --- | --- | --- | --- | --- | --- |\n')

  def row(name, psnr, ssim, wpsnr, wssim, seconds, params, flops):
    time_s = '-' if seconds is None else f'{seconds:.2f}s'
    params_s = '-' if params is None else f'{params / 1e6:.2f}M'
    flops_s = '-' if flops is None or not math.isfinite(flops) else (
        f'{flops / 1e12:.3f}T' if flops >= 1e11 else f'{flops / 1e9:.2f}G')
    return (f'| {name} | {_fmt(psnr, 2)} | {_fmt(ssim, 4)} | {_fmt(wpsnr, 2)} | '
            f'{_fmt(wssim, 4)} | {time_s} | {params_s} | {flops_s} |\n')

  name = f'LMD-ViT (lmdvit-jax, {Path(summary["checkpoint"]).name})'
  flops = m.get('flops')
  lines = [head, row(*PAPER_ROW),
           row(name, m['psnr'], m['ssim'], m['wpsnr'], m['wssim'], m['seconds_per_image'],
               summary['params'], flops if flops is not None else float('nan')),
           row('Blurred input', m['input_psnr'], m['input_ssim'], m['input_wpsnr'],
               m['input_wssim'], None, None, None)]
  sizes = ', '.join(f'{k} ({v["count"]} images, padded {v["padded"]})'
                    for k, v in summary['sizes'].items())
  notes = [
      '',
      f'Data: `{summary["data"]}`, {summary["count"]} images; sizes {sizes}.',
      f'Device: {summary["device"]}. Time: seconds per image, compilation excluded.',
      f'Capacity `{summary["model"]["capacity"]}`, keep threshold '
      f'{summary["model"]["keep_threshold"]}; windows kept: '
      f'{_fmt(100 * m["kept_fraction"], 1)}%, pruning precision '
      f'{_fmt(100 * m["prune_precision"], 1)}%, recall {_fmt(100 * m["prune_recall"], 1)}%.',
      'FLOPs: XLA cost analysis of the compiled model at the evaluated (padded) size, '
      'per image. With capacity `exact` each block counts its largest window bucket, '
      'so the figure is the dense upper bound; pass a fixed `--capacity` fraction to '
      'count that budget.',
      'PSNR_w / SSIM_w: weighted by the blur mask. Paper row: the released model on a '
      'GPU, quoted from the paper.',
  ]
  return ''.join(lines) + '\n'.join(notes) + '\n'


def evaluate(checkpoint: str, data: str, output: str, *, step: int | None = None,
             split: str = 'test', capacity: str | float = 'exact',
             keep_threshold: float | None = None, num_panels: int = 4,
             panel_height: int = 192, max_images: int = 0, save_images: bool = False,
             warmup: bool = True, quantize_output: bool = True,
             progress: bool = True) -> dict[str, Any]:
  """Evaluates `checkpoint` on `data`; writes metrics.json, table.md and panels.

  Returns:
    The summary written to OUT/metrics.json (before NaN -> null).

  Raises:
    ValueError: bad data spec or capacity. FileNotFoundError: missing folders.
    DataError: unreadable or inconsistent data files.
  """
  source = open_source(data, split=split)
  if not Path(checkpoint).is_dir():
    raise FileNotFoundError(f'checkpoint directory not found: {checkpoint}')
  overrides: dict[str, Any] = {'capacity': parse_capacity(capacity)}
  if keep_threshold is not None:
    overrides['keep_threshold'] = float(keep_threshold)
  deblurrer = Deblurrer.from_checkpoint(checkpoint, step, overrides, warmup=warmup)
  out_dir = Path(output)
  out_dir.mkdir(parents=True, exist_ok=True)

  count = len(source) if max_images <= 0 else min(max_images, len(source))
  images, sizes = [], {}
  bar = tqdm(range(count), desc='evaluate', unit='img', disable=not progress)
  for i in bar:
    sample = source[i]
    blur, sharp, mask = sample['blur'], sample['sharp'], sample['mask']
    result = deblurrer(blur)
    pred = quantize(result.restored) if quantize_output else result.restored
    record: dict[str, Any] = {'name': sample['name'], 'height': blur.shape[0],
                              'width': blur.shape[1]}
    record.update(image_scores(pred, sharp, mask))
    record.update({f'input_{k}': v for k, v in image_scores(blur, sharp, mask).items()})
    prune = pruning_scores(result, mask)
    record.update(
        mask_fraction=float(mask.mean()),
        prune_precision=nanmean(prune['precision']),
        prune_recall=nanmean(prune['recall']),
        prune_accuracy=nanmean(prune['accuracy']),
        kept_fraction=nanmean(prune['kept_fraction']),
        dropped_windows=int(sum(result.dropped)),
        seconds=result.seconds, flops=result.flops,
        blocks={k: v.tolist() for k, v in prune.items()})
    images.append(record)
    key = f'{blur.shape[0]}x{blur.shape[1]}'
    g = result.geometry
    sizes.setdefault(key, {'count': 0, 'padded': f'{g.padded_height}x{g.padded_width}',
                           'flops': result.flops})['count'] += 1
    bar.set_postfix(psnr=f'{record["psnr"]:.2f}', wpsnr=f'{record["wpsnr"]:.2f}')

    if i < num_panels:
      picture = panels.evaluation_panel(blur, pred, sharp, mask, result, panel_height)
      panels.save_png(out_dir / 'panels' / f'{i:03d}_{_safe_name(sample["name"])}.png',
                      picture, compress_level=6)
    if save_images:
      panels.save_png(out_dir / 'images' / f'{_safe_name(sample["name"])}.png',
                      Image.fromarray(to_uint8(pred)))

  mean = {k: nanmean(r[k] for r in images) for k in
          IMAGE_METRICS + tuple(f'input_{k}' for k in IMAGE_METRICS) +
          ('prune_precision', 'prune_recall', 'prune_accuracy', 'kept_fraction', 'flops',
           'mask_fraction')}
  mean['seconds_per_image'] = nanmean(r['seconds'] for r in images)
  mean['dropped_windows'] = nanmean(r['dropped_windows'] for r in images)
  blocks = []
  for j, b in enumerate(deblurrer.blocks):
    entry = {'stage': b.stage, 'block': b.block, 'shifted': b.shifted}
    entry.update({k: nanmean(r['blocks'][k][j] for r in images)
                  for k in ('precision', 'recall', 'accuracy', 'kept_fraction')})
    blocks.append(entry)
  model = deblurrer.model
  device = jax.devices()[0]
  summary = {
      'checkpoint': str(checkpoint), 'data': data, 'split': split, 'count': len(images),
      'quantized': quantize_output,
      'model': {k: getattr(model, k) for k in (
          'embed_dim', 'depths', 'num_heads', 'win_size', 'mlp_ratio', 'modulator',
          'prune_loc', 'keep_threshold', 'capacity', 'capacity_buckets')},
      'params': count_params(deblurrer.params),
      'device': f'{device.platform} ({device.device_kind}) x{jax.device_count()}',
      'sizes': sizes, 'mean': mean, 'blocks': blocks, 'images': images,
  }
  checkpointing.write_json_atomic(out_dir / 'metrics.json', _jsonable(summary))
  panels.write_bytes_atomic(out_dir / 'table.md', table_markdown(summary).encode())
  return summary


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for flag in (_CHECKPOINT, _DATA, _OUTPUT):
    if not flag.value:
      raise app.UsageError(f'--{flag.name} is required.')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Checkpoint loading logs a lot at INFO.
  try:
    summary = evaluate(
        _CHECKPOINT.value, _DATA.value, _OUTPUT.value, step=_STEP.value, split=_SPLIT.value,
        capacity=_CAPACITY.value, keep_threshold=_KEEP_THRESHOLD.value,
        num_panels=_NUM_PANELS.value, panel_height=_PANEL_HEIGHT.value,
        max_images=_MAX_IMAGES.value, save_images=_SAVE_IMAGES.value, warmup=_WARMUP.value,
        quantize_output=_QUANTIZE.value)
  except (ValueError, FileNotFoundError, DataError) as e:
    print(f'evaluate.py: error: {e}', file=sys.stderr)
    sys.exit(2)
  m = summary['mean']
  print(f'{summary["count"]} images: PSNR {m["psnr"]:.2f}  SSIM {m["ssim"]:.4f}  '
        f'PSNR_w {m["wpsnr"]:.2f}  SSIM_w {m["wssim"]:.4f}  '
        f'(input {m["input_psnr"]:.2f} / {m["input_wpsnr"]:.2f})  '
        f'{m["seconds_per_image"]:.3f} s/image  kept {100 * m["kept_fraction"]:.1f}%')
  print(f'Wrote {Path(_OUTPUT.value) / "metrics.json"} and table.md')


if __name__ == '__main__':
  app.run(main)
