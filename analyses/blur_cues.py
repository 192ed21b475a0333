r"""How well do simple local cues tell blurred windows from sharp ones?

    python -m analyses.blur_cues
    python -m analyses.blur_cues --specs='synthetic?size=256&count=40&max_blur=16'

For each data spec, every image is cut into `--window` x `--window` pixel
windows, labelled blurred when at least half their pixels are in the mask.
The cue is the mean absolute image gradient (grey level, horizontal plus
vertical) in a square neighbourhood of the window (low = smooth = blur-like);
the table gives its ROC AUC for the label (0.5: no information, 1: perfect).
It bounds what a confidence predictor can read from local sharpness alone,
e.g. in the first encoder stage.
"""

from __future__ import annotations

from absl import flags
import numpy as np
from scipy import ndimage

from analyses.pruning_ranking import roc_auc
from lmdvit_jax import cli
from lmdvit_jax.data import specs

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a program, so that importing the module claims no flag names.
  flags.DEFINE_list(
    'specs',
    ['synthetic?size=256&count=40', 'synthetic?size=256&count=40&min_blur=4&max_blur=16'],
    'data specs (training split)',
  )
  flags.DEFINE_integer('window', 4, 'window side in pixels')
  flags.DEFINE_list('contexts', ['4', '8', '16'], 'neighbourhood sides in pixels')


def main(argv):
  del argv
  ws, contexts = FLAGS.window, [int(c) for c in FLAGS.contexts]
  print('| data | blurred windows | ' + ' | '.join(f'AUC, {c} px' for c in contexts) + ' |')
  print('| --- | --- |' + ' --- |' * len(contexts))
  for spec in FLAGS.specs:
    source = specs.open_source(spec, split='train')
    cues, labels = [[] for _ in contexts], []
    for i in range(len(source)):
      sample = source[i]
      grey = sample['blur'].mean(axis=-1)
      energy = np.abs(np.diff(grey, axis=1, append=grey[:, -1:])) + np.abs(
        np.diff(grey, axis=0, append=grey[-1:])
      )
      h, w = (grey.shape[0] // ws) * ws, (grey.shape[1] // ws) * ws
      pool = lambda a, h=h, w=w: (
        a[:h, :w].reshape(h // ws, ws, w // ws, ws).mean(axis=(1, 3)).ravel()
      )
      labels.append(pool(sample['mask'][..., 0]) >= 0.5)
      for j, c in enumerate(contexts):
        cues[j].append(-pool(ndimage.uniform_filter(energy, c)))
    y = np.concatenate(labels)
    aucs = [roc_auc(y, np.concatenate(c)) for c in cues]
    print(f'| {spec} | {y.mean():.3f} | ' + ' | '.join(f'{a:.3f}' for a in aucs) + ' |')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
