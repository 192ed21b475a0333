"""The paper's Table 1 layout for an evaluation summary (table.md)."""

from __future__ import annotations

from collections.abc import Mapping
import math
from pathlib import Path
from typing import Any

# The released model in the paper's Table 1 (ReLoBlur test set, full resolution).
# Its complexity column (1.485 T) counts multiply-adds (MACs), the usual convention
# of the tools such papers use; XLA's cost analysis counts 2 FLOPs per multiply-add.
PAPER_ROW = (
  'LMD-ViT (paper, Table 1)',
  35.43,
  0.9288,
  30.29,
  0.8934,
  0.56,
  54.50e6,
  1.485e12,
  None,
)


def _fmt(value: float, digits: int) -> str:
  return '-' if value is None or not math.isfinite(value) else f'{value:.{digits}f}'


def table_markdown(summary: Mapping[str, Any]) -> str:
  """Table 1 layout: Method | PSNR | SSIM | PSNR_w | SSIM_w | Time | Params | MACs | XLA FLOPs."""
  m = summary['mean']
  head = (
    '| Method | PSNR | SSIM | PSNR_w | SSIM_w | Time | Params | MACs | XLA FLOPs |\n'
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
  )

  def count(value):
    if value is None or not math.isfinite(value):
      return '-'
    return f'{value / 1e12:.3f}T' if value >= 1e11 else f'{value / 1e9:.2f}G'

  def row(name, psnr, ssim, wpsnr, wssim, seconds, params, macs, flops):
    time_s = '-' if seconds is None else f'{seconds:.2f}s'
    params_s = '-' if params is None else f'{params / 1e6:.2f}M'
    return (
      f'| {name} | {_fmt(psnr, 2)} | {_fmt(ssim, 4)} | {_fmt(wpsnr, 2)} | '
      f'{_fmt(wssim, 4)} | {time_s} | {params_s} | {count(macs)} | {count(flops)} |\n'
    )

  name = f'LMD-ViT (lmdvit-jax, {Path(summary["checkpoint"]).name})'
  flops = m.get('flops')
  flops = float('nan') if flops is None else flops
  lines = [
    head,
    row(*PAPER_ROW),
    row(
      name,
      m['psnr'],
      m['ssim'],
      m['wpsnr'],
      m['wssim'],
      m['seconds_per_image'],
      summary['params'],
      flops / 2,
      flops,
    ),
    row(
      'Blurred input',
      m['input_psnr'],
      m['input_ssim'],
      m['input_wpsnr'],
      m['input_wssim'],
      None,
      None,
      None,
      None,
    ),
  ]
  sizes = ', '.join(
    f'{k} ({v["count"]} images, padded {v["padded"]}, {v.get("tiles", "whole")})'
    for k, v in summary['sizes'].items()
  )
  notes = [
    '',
    f'Data: `{summary["data"]}`, {summary["count"]} images; sizes {sizes}.',
    f'Device: {summary["device"]}. Time: seconds per image, compilation excluded.',
    f'Capacity `{summary["model"]["capacity"]}`, keep threshold '
    f'{summary["model"]["keep_threshold"]}; windows kept: '
    f'{_fmt(100 * m["kept_fraction"], 1)}%, pruning precision '
    f'{_fmt(100 * m["prune_precision"], 1)}%, recall {_fmt(100 * m["prune_recall"], 1)}%.',
    'XLA FLOPs: XLA cost analysis of the compiled model at the evaluated (padded) size, '
    'per image; MACs: half of it, the multiply-adds the paper counts (XLA counts each '
    'multiply-add as 2 FLOPs; its few element-wise FLOPs make this a slight over-count). '
    'With capacity `exact` (shown as -) each pruned block loops over chunks of kept '
    'windows as often as they need, which XLA cannot count; pass a fixed `--capacity` '
    'fraction to count that budget.',
    'PSNR_w / SSIM_w: weighted by the blur mask. Paper row: the released model on a '
    'GPU, quoted from the paper.',
  ]
  passes = summary.get('self_ensemble', 1)
  if passes > 1:
    notes.append(
      f'Self-ensemble: the model ran on {passes} flipped and transposed copies of '
      'each image, outputs averaged; time and FLOPs are of all passes, kept windows, '
      'precision and recall their mean over the passes.'
    )
  return ''.join(lines) + '\n'.join(notes) + '\n'
