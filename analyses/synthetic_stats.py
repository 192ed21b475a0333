r"""Blur statistics of synthetic data sets (the README's Data table).

    python -m analyses.synthetic_stats
    python -m analyses.synthetic_stats --specs='synthetic?size=384x256&count=32&max_blur=8'

For each data spec (test split): the blurred share of the image, the blurred
input's PSNR and its weighted PSNR over the blur mask, as the evaluation
scores them.
"""

from __future__ import annotations

from absl import flags
import numpy as np

from lmdvit_jax import cli, metrics
from lmdvit_jax.data import specs

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_list(
    'specs',
    ['synthetic?size=384x256&count=16', 'synthetic?size=384x256&count=16&min_blur=3'],
    'data specs',
  )


def stats(spec: str) -> dict[str, np.ndarray]:
  """Per image: blurred share, input PSNR, input weighted PSNR."""
  source = specs.open_source(spec, split='test')
  rows = []
  for i in range(len(source)):
    s = source[i]
    rows.append(
      (
        float(s['mask'].mean()),
        float(metrics.psnr(s['blur'], s['sharp'])),
        float(metrics.weighted_psnr(s['blur'], s['sharp'], s['mask'])),
      )
    )
  share, psnr, wpsnr = np.asarray(rows).T
  return {'share': share, 'psnr': psnr, 'wpsnr': wpsnr}


def main(argv):
  del argv
  print(
    '| data (test split) | blurred share (mean, min-max) | input PSNR | '
    'input weighted PSNR (mean, min-max) |'
  )
  print('| --- | --- | --- | --- |')
  for spec in FLAGS.specs:
    r = stats(spec)
    print(
      f'| {spec} | {100 * r["share"].mean():.1f}% ({100 * r["share"].min():.1f}-'
      f'{100 * r["share"].max():.1f}%) | {r["psnr"].mean():.2f} dB | '
      f'{np.nanmean(r["wpsnr"]):.2f} dB ({np.nanmin(r["wpsnr"]):.2f}-'
      f'{np.nanmax(r["wpsnr"]):.2f}) |'
    )


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
