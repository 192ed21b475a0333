r"""Where does a trained model disturb sharp regions, and what does the keep threshold trade?

    python -m analyses.sharp_damage --checkpoint=workdirs/demo \
        --data='synthetic?size=384x256&count=16'
    python -m analyses.sharp_damage --checkpoint=workdirs/demo \
        --data='synthetic?size=384x256&count=16&seed=1' --split=val

Outside the blur mask the blurred input equals the sharp image, so every error
there is one the model made. The first table splits the squared error outside
the mask (output quantised to uint8, as evaluated) by how many predicting
blocks kept the pixel's window, the second by the pixel's distance to the mask.
The third scores the whole set (`evaluation.run`, `--capacity`, 'exact' by default) at each
keep threshold of `--thresholds`: gains over the input, PSNR outside the mask,
pruning recall and precision, kept windows. Gains are means over images, as
the demo reports them. With a self-ensemble (the checkpoint's, or
`--self_ensemble`), a block kept a pixel if it did in any pass.
"""

from __future__ import annotations

from absl import flags
import numpy as np
from scipy import ndimage

from lmdvit_jax import cli, evaluation
from lmdvit_jax.data.specs import open_source
from lmdvit_jax.image_io import quantize
from lmdvit_jax.inference import Deblurrer

FLAGS = flags.FLAGS

DISTANCE_BINS = (0, 2, 4, 8, 16, np.inf)  # pixels, (low, high]


def _define_flags() -> None:
  # Only when run as a program, so that importing the module claims no flag names.
  cli.define_inference_flags()
  flags.mark_flag_as_required('checkpoint')
  flags.DEFINE_string('data', 'synthetic?size=384x256&count=16', 'data spec')
  flags.DEFINE_string('split', 'test', 'split of the data spec')
  flags.DEFINE_list('thresholds', ['0.5', '0.6', '0.7', '0.8', '0.9'], 'keep thresholds to score')


def error_split(
  squared_error: np.ndarray, outside: np.ndarray, groups: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
  """Sums of squared error and pixel counts outside the mask, per group.

  Args:
    squared_error: [H, W] squared error per pixel (mean over channels).
    outside: [H, W] bool, pixels outside the blur mask.
    groups: [H, W] int group of each pixel in [0, n_groups).

  Returns:
    ([n_groups] error sums, [n_groups] pixel counts).
  """
  g = groups[outside]
  return (
    np.bincount(g, squared_error[outside], n_groups),
    np.bincount(g, minlength=n_groups).astype(np.float64),
  )


def distance_group(mask: np.ndarray) -> np.ndarray:
  """[H, W] bool mask -> [H, W] index of each pixel's distance bin (DISTANCE_BINS)."""
  distance = ndimage.distance_transform_edt(~mask) if mask.any() else np.full(mask.shape, np.inf)
  return np.clip(
    np.searchsorted(DISTANCE_BINS, distance, side='left') - 1, 0, len(DISTANCE_BINS) - 2
  )


def _psnr(error: np.ndarray, count: np.ndarray) -> list[str]:
  return [
    f'{10 * np.log10(c / e):.1f}' if e > 0 else 'inf' if c > 0 else '-'
    for e, c in zip(error, count)
  ]


def main(argv):
  del argv
  settings = cli.inference_settings()

  def load(**changes):
    return Deblurrer.from_checkpoint(FLAGS.checkpoint, FLAGS.step, settings.replace(**changes))

  deblurrer = load()
  source = open_source(FLAGS.data, split=FLAGS.split)
  n_blocks, n_bins = len(deblurrer.blocks), len(DISTANCE_BINS) - 1
  by_kept = np.zeros((2, n_blocks + 1))
  by_distance = np.zeros((2, n_bins))
  for i in range(len(source)):
    sample = source[i]
    result = deblurrer(sample['blur'])
    error = np.mean(
      (np.asarray(quantize(result.restored), np.float64) - np.asarray(sample['sharp'], np.float64))
      ** 2,
      axis=-1,
    )
    mask = np.asarray(sample['mask'])[..., 0] > 0
    kept = sum(k.astype(np.int64) for k in result.kept_maps())
    by_kept += error_split(error, ~mask, kept, n_blocks + 1)
    by_distance += error_split(error, ~mask, distance_group(mask), n_bins)

  print(
    f'{len(source)} images of {FLAGS.data} ({FLAGS.split}), {FLAGS.checkpoint}, keep '
    f'threshold {deblurrer.model.keep_threshold}, {deblurrer.self_ensemble} pass(es) per '
    'image: squared error outside the blur mask\n'
  )
  print('| blocks that kept the pixel | share of pixels | share of error | PSNR (dB) |')
  print('| --- | --- | --- | --- |')
  for k, (e, c, p) in enumerate(zip(*by_kept, _psnr(*by_kept))):
    print(f'| {k} of {n_blocks} | {c / by_kept[1].sum():.3f} | {e / by_kept[0].sum():.3f} | {p} |')
  print('\n| distance to the mask (px) | share of pixels | share of error | PSNR (dB) |')
  print('| --- | --- | --- | --- |')
  for k, (e, c, p) in enumerate(zip(*by_distance, _psnr(*by_distance))):
    low, high = DISTANCE_BINS[k], DISTANCE_BINS[k + 1]
    print(
      f'| ({low}, {high}] | {c / by_distance[1].sum():.3f} | {e / by_distance[0].sum():.3f} | {p} |'
    )

  print(
    '\n| keep threshold | weighted PSNR gain (dB) | whole-image PSNR gain (dB) | '
    'PSNR outside (dB) | recall | precision | kept |'
  )
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for t in FLAGS.thresholds:
    m = evaluation.run(load(keep_threshold=float(t)), source)['mean']
    print(
      f'| {t} | {m["wpsnr"] - m["input_wpsnr"]:+.3f} | {m["psnr"] - m["input_psnr"]:+.3f} | '
      f'{m["sharp_psnr"]:.2f} | {m["prune_recall"]:.3f} | {m["prune_precision"]:.3f} | '
      f'{m["kept_fraction"]:.3f} |',
      flush=True,
    )


if __name__ == '__main__':
  _define_flags()
  cli.run(main, quiet=True)
