r"""The demo: train a small LMD-ViT on synthetic local blur, evaluate it, show it.

    python demo.py                                   # configs/demo.py, workdirs/demo
    python demo.py --workdir=/tmp/d --config.num_train_steps=100

Trains with `train.py`'s run (resuming if the workdir has checkpoints), then
evaluates the final params on the held-out synthetic set with `evaluate.py`'s
code and prints each target of the demo beside the measured value:

  weighted PSNR over blurred regions  >= blurred input's + 3 dB
  PSNR over sharp regions (outside the mask, where input == ground truth) >= 40 dB
  pruning recall of blurred pixels >= 0.95, precision >= 0.8 (mean over blocks)

Everything lands in WORKDIR/demo_eval/ (metrics.json, table.md, panels/, and
summary.json with the targets).
"""

from __future__ import annotations

from pathlib import Path

from absl import app
from absl import flags

import evaluate
import train

flags.FLAGS.set_default('config', str(Path(__file__).resolve().parent / 'configs' / 'demo.py'))
flags.FLAGS.set_default('workdir', 'workdirs/demo')


def targets(mean: dict) -> list[tuple[str, float, str, bool]]:
  """(name, measured value, requirement, met) for each target of the demo."""
  gain = mean['wpsnr'] - mean['input_wpsnr']
  rows = [
      ('weighted PSNR gain over the input (dB)', gain, '>= 3', gain >= 3),
      ('PSNR over sharp regions (dB)', mean['sharp_psnr'], '>= 40', mean['sharp_psnr'] >= 40),
      ('pruning recall of blurred pixels', mean['prune_recall'], '>= 0.95',
       mean['prune_recall'] >= 0.95),
      ('pruning precision', mean['prune_precision'], '>= 0.8', mean['prune_precision'] >= 0.8),
  ]
  return [(n, float(v), r, bool(ok)) for n, v, r, ok in rows]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config, workdir = train._CONFIG.value, Path(train._WORKDIR.value)  # pylint: disable=protected-access
  train.train_and_evaluate(config, workdir)

  out = workdir / 'demo_eval'
  summary = evaluate.evaluate(str(workdir), config.demo.data, str(out), split='test',
                              capacity='exact', num_panels=config.demo.num_panels)
  mean = summary['mean']
  rows = targets(mean)
  from lmdvit_jax import checkpointing  # pylint: disable=import-outside-toplevel
  checkpointing.write_json_atomic(out / 'summary.json', {
      'data': config.demo.data, 'count': summary['count'],
      'targets': [dict(name=n, value=v, requirement=r, met=ok) for n, v, r, ok in rows],
      'kept_fraction_per_block': [b['kept_fraction'] for b in summary['blocks']],
  })

  print(f'\nHeld-out synthetic set ({summary["count"]} images, {config.demo.data}):')
  print(f'  blurred input: PSNR {mean["input_psnr"]:.2f} dB, weighted PSNR '
        f'{mean["input_wpsnr"]:.2f} dB')
  print(f'  restored:      PSNR {mean["psnr"]:.2f} dB, weighted PSNR {mean["wpsnr"]:.2f} dB, '
        f'SSIM {mean["ssim"]:.4f}')
  print('\n| target | measured | required | met |\n| --- | --- | --- | --- |')
  for name, value, req, ok in rows:
    print(f'| {name} | {value:.3f} | {req} | {"PASS" if ok else "FAIL"} |')
  print('\nkept fraction per pruning block:')
  for b in summary['blocks']:
    print(f'  {b["stage"]} block {b["block"]}: {b["kept_fraction"]:.3f} '
          f'(precision {b["precision"]:.3f}, recall {b["recall"]:.3f})')
  print(f'\nPanels (input | output | ground truth | mask | kept windows): {out / "panels"}')


if __name__ == '__main__':
  app.run(main)
