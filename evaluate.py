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

from pathlib import Path

from absl import app, flags

from lmdvit_jax import cli, compilation_cache, evaluation

cli.define_inference_flags()
_DATA = flags.DEFINE_string(
  'data',
  None,
  'Data spec: npy:FOLDER, reloblur:DIR, gopro:DIR, '
  'pairs:DIR, synthetic[?count=N&size=S], tfds:NAME.',
)
_OUTPUT = flags.DEFINE_string('output', None, 'Output folder.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split for reloblur/gopro/synthetic/tfds specs.')
_NUM_PANELS = flags.DEFINE_integer('num_panels', 4, 'Panels for the first N images.')
_PANEL_HEIGHT = flags.DEFINE_integer('panel_height', 192, 'Tile height of the panels (pixels).')
_MAX_IMAGES = flags.DEFINE_integer('max_images', 0, 'Evaluate the first N images only (0: all).')
_SAVE_IMAGES = flags.DEFINE_bool('save_images', False, 'Write the restored images as PNG.')
_WARMUP = flags.DEFINE_bool('warmup', True, 'Run each new input size once untimed first.')
_SKIP_BAD = flags.DEFINE_bool(
  'skip_bad',
  False,
  'Leave out unreadable or invalid files (listed '
  'in metrics.json) instead of stopping before any work.',
)
_QUANTIZE = flags.DEFINE_bool(
  'quantize',
  True,
  'Score the output as saved to uint8; '
  '--noquantize scores the clamped float output as test.py does.',
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for name in ('checkpoint', 'data', 'output'):
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required.')
  compilation_cache.enable()
  summary = evaluation.evaluate(
    FLAGS.checkpoint,
    _DATA.value,
    _OUTPUT.value,
    cli.inference_settings(),
    step=FLAGS.step,
    split=_SPLIT.value,
    num_panels=_NUM_PANELS.value,
    panel_height=_PANEL_HEIGHT.value,
    max_images=_MAX_IMAGES.value,
    save_images=_SAVE_IMAGES.value,
    warmup=_WARMUP.value,
    quantize_output=_QUANTIZE.value,
    skip_bad=_SKIP_BAD.value,
  )
  m = summary['mean']
  print(
    f'{summary["count"]} images: PSNR {m["psnr"]:.2f}  SSIM {m["ssim"]:.4f}  '
    f'PSNR_w {m["wpsnr"]:.2f}  SSIM_w {m["wssim"]:.4f}  '
    f'(input {m["input_psnr"]:.2f} / {m["input_wpsnr"]:.2f})  '
    f'{m["seconds_per_image"]:.3f} s/image  kept {100 * m["kept_fraction"]:.1f}%'
  )
  print(f'Wrote {Path(_OUTPUT.value) / "metrics.json"} and table.md')


if __name__ == '__main__':
  cli.run(main, quiet=True)
