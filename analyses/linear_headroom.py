r"""How much of the synthetic blur can a linear filter undo?

    python -m analyses.linear_headroom
    python -m analyses.linear_headroom --specs='synthetic?size=256&count=16&max_blur=16'

For each data spec (test split: the demo's held-out photos and seeds), the
table gives the blurred input's weighted PSNR over the blur mask and the gain
of two linear restorations applied inside the mask:

* unsharp masking `blur + a * (blur - gaussian(blur, s))`, with the best
  (a, s) of a small grid;
* the least-squares `--taps` x `--taps` filter (shared by the colour
  channels), fitted on the masked pixels of the very set it is scored on: an
  optimistic bound on any single linear filter;
* one such filter fitted per image on that image's own masked pixels and
  applied inside its mask: an oracle that knows each image's blur, what a
  restorer adapting to the blur it sees could reach with linear filtering.

A network has to do better than both to show a gain; where both stay near
0 dB, the error in the mask is not lost detail but the object's smear over
the background, which only content- and kernel-aware restoration undoes.
"""

from __future__ import annotations

from absl import flags
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from lmdvit_jax import cli, metrics
from lmdvit_jax.data import specs

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a program, so that tests can import the helpers.
  flags.DEFINE_list(
    'specs',
    [
      'synthetic?size=256&count=16',
      'synthetic?size=256&count=16&min_blur=4&max_blur=16',
      'synthetic?size=256&count=16&min_blur=2&max_blur=6',
    ],
    'data specs (test split)',
  )
  flags.DEFINE_integer('taps', 15, 'side of the least-squares filter (odd)')
  flags.DEFINE_integer('samples', 200_000, 'masked pixels used to fit the filter')


def mean_wpsnr(samples, restore) -> float:
  """Mean over images of the weighted PSNR of `restore(blur)`, clipped to [0, 1]."""
  return float(
    np.mean(
      [
        metrics.weighted_psnr(np.clip(restore(s['blur']), 0, 1), s['sharp'], s['mask'])
        for s in samples
      ]
    )
  )


def patches(image: np.ndarray, taps: int) -> np.ndarray:
  """[H, W, 3] -> [H, W, 3, taps * taps] reflect-padded neighbourhoods."""
  r = taps // 2
  # 'symmetric' is scipy.ndimage's 'reflect', which applies the fitted filter.
  padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode='symmetric')
  view = sliding_window_view(padded, (taps, taps), axis=(0, 1))  # [H, W, 3, t, t]
  return view.reshape(*image.shape, taps * taps)


def fit_filter(samples, taps: int, budget: int, rng: np.random.Generator) -> np.ndarray:
  """Least-squares [taps, taps] filter mapping blurred neighbourhoods to sharp
  pixels over the masked pixels (a random subset of `budget` of them)."""
  rows, targets = [], []
  per_image = max(1, budget // len(samples))
  for s in samples:
    ys, xs = np.nonzero(s['mask'][..., 0] > 0.5)
    pick = rng.choice(len(ys), size=min(per_image, len(ys)), replace=False)
    p = patches(s['blur'], taps)[ys[pick], xs[pick]]  # [n, 3, taps^2]
    rows.append(p.reshape(-1, taps * taps))
    targets.append(s['sharp'][ys[pick], xs[pick]].reshape(-1))
  a, b = np.concatenate(rows), np.concatenate(targets)
  return np.linalg.lstsq(a, b, rcond=None)[0].reshape(taps, taps)


def main(argv):
  del argv
  taps, rng = FLAGS.taps, np.random.default_rng(0)
  print(
    f'| data | input weighted PSNR (dB) | best unsharp mask gain (dB) | '
    f'{taps}x{taps} least-squares filter gain (dB) | one filter per image (oracle) |'
  )
  print('| --- | --- | --- | --- | --- |')
  for spec in FLAGS.specs:
    source = specs.open_source(spec, split='test')
    samples = [source[i] for i in range(len(source))]
    samples = [s for s in samples if s['mask'].sum() > 0]
    base = mean_wpsnr(samples, lambda b: b)
    unsharp = max(
      mean_wpsnr(samples, lambda b, a=a, s=s: b + a * (b - ndimage.gaussian_filter(b, (s, s, 0))))
      for s in (0.7, 1.0, 1.5, 2.5)
      for a in (0.25, 0.5, 1.0, 2.0)
    )
    kernel = fit_filter(samples, taps, FLAGS.samples, rng)
    filtered = mean_wpsnr(
      samples, lambda b, k=kernel: ndimage.correlate(b, k[..., None], mode='reflect')
    )
    oracle = []
    for s in samples:
      k = fit_filter([s], taps, FLAGS.samples // 10, rng)[..., None]
      out = np.where(s['mask'] > 0, ndimage.correlate(s['blur'], k, mode='reflect'), s['blur'])
      oracle.append(mean_wpsnr([dict(s, blur=out)], lambda b: b))
    print(
      f'| {spec} | {base:.2f} | {unsharp - base:+.2f} | {filtered - base:+.2f} | '
      f'{np.mean(oracle) - base:+.2f} |'
    )


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
