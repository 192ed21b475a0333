r"""How well do a trained model's confidence predictors rank blurred pixels?

    python -m analyses.pruning_ranking --checkpoint=workdirs/demo \
        --data='synthetic?size=256&count=16'

Pruning recall and precision (evaluate.py) are read at one keep threshold.
This script looks at the keep probability itself: for every predicting block
it up-samples the window keep probabilities to pixels (as the decisions are)
and prints, against the blur mask, the ROC AUC, recall and precision at the
model's threshold, and the best precision of any threshold whose recall is at
least `--recall`, all pooled over the pixels of the whole set (evaluate.py
averages per image). If that best precision is low, no choice of threshold
meets a precision target at that recall: the predictors' ranking is the
limit, not the threshold.
"""

from __future__ import annotations

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from lmdvit_jax import cli, inference, metrics
from lmdvit_jax.data.specs import open_source
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import pruning

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a program: tests import this module beside evaluate.py,
  # which owns the same flag names.
  flags.DEFINE_string('checkpoint', None, 'checkpoint directory', required=True)
  flags.DEFINE_string('data', 'synthetic?size=256&count=16', 'data spec')
  flags.DEFINE_string('split', 'test', 'split of the data spec')
  flags.DEFINE_float('recall', 0.95, 'recall the best precision is read at')
  flags.DEFINE_integer(
    'tile',
    0,
    'score each image as tiles of this side (e.g. the '
    'training crop size) instead of whole; 0: whole',
  )


def keep_maps(
  logits: jax.Array, win_size: int, shifted: bool, height: int, width: int
) -> jax.Array:
  """Token logits `[B, h, w, 2]` -> pixel keep probabilities `[B, H, W]`,
  window-averaged as the decision layer does."""
  shift = win_size // 2 if shifted else 0
  probability = pruning.keep_probability(pruning.window_logits(logits, win_size, shift))
  return metrics.upsample_decision(probability, height, width, shifted)


def to_tiles(image: np.ndarray, side: int) -> np.ndarray:
  """`[H, W, C]` -> `[H/side * W/side, side, side, C]`, row-major tiles."""
  h, w, c = image.shape
  if h % side or w % side:
    raise ValueError(f'{h}x{w} is not a multiple of the {side}x{side} tile')
  return (
    image.reshape(h // side, side, w // side, side, c)
    .transpose(0, 2, 1, 3, 4)
    .reshape(-1, side, side, c)
  )


def from_tiles(tiles: np.ndarray, height: int, width: int) -> np.ndarray:
  """`[n, side, side]` row-major tiles -> `[height, width]` (inverse of `to_tiles`)."""
  side = tiles.shape[1]
  return (
    tiles.reshape(height // side, width // side, side, side)
    .transpose(0, 2, 1, 3)
    .reshape(height, width)
  )


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Probability that a random positive scores above a random negative (ties: 1/2)."""
  ranks = stats.rankdata(scores)
  pos = int(labels.sum())
  neg = labels.size - pos
  return float((ranks[labels].sum() - pos * (pos + 1) / 2) / max(pos * neg, 1))


def ranking(
  probability: np.ndarray, blurred: np.ndarray, threshold: float, recall: float
) -> dict[str, float]:
  """AUC, recall/precision at `threshold`, best precision at >= `recall`."""
  order = np.argsort(-probability, kind='stable')
  p, y = probability[order], blurred[order]
  tp, fp = np.cumsum(y), np.cumsum(~y)
  last = np.r_[p[1:] != p[:-1], True]  # Thresholds between distinct values.
  tp, fp = tp[last], fp[last]
  positives, negatives = tp[-1], fp[-1]
  tpr = tp / max(positives, 1)
  precision = tp / np.maximum(tp + fp, 1)
  reach = tpr >= recall
  kept = probability > threshold
  return {
    'auc': roc_auc(blurred, probability),
    'recall': float((kept & blurred).sum() / max(positives, 1)),
    'precision': float((kept & blurred).sum() / max(kept.sum(), 1)),
    'best_precision': float(precision[reach].max()) if reach.any() else 0.0,
    'blurred_share': float(positives / max(positives + negatives, 1)),
  }


def main(argv):
  del argv
  deblurrer = inference.Deblurrer.from_checkpoint(
    FLAGS.checkpoint, settings=InferenceSettings(capacity='masked')
  )
  model, blocks = deblurrer.model, deblurrer.blocks
  source = open_source(FLAGS.data, split=FLAGS.split)
  apply = jax.jit(lambda params, x: model.apply({'params': params}, x, train=False).scores)

  maps, masks = [[] for _ in blocks], []
  for i in range(len(source)):
    sample = source[i]
    g = deblurrer.geometry(*sample['blur'].shape[:2])
    image = np.asarray(g.pad(sample['blur']))
    valid = g.valid()[..., 0] > 0
    h, w = valid.shape
    side = FLAGS.tile
    scores = apply(deblurrer.params, jnp.asarray(to_tiles(image, side) if side else image[None]))
    for k, (block, logits) in enumerate(zip(blocks, scores)):
      probability = np.asarray(
        keep_maps(logits, model.win_size, block.shifted, side or h, side or w)
      )
      probability = from_tiles(probability, h, w) if side else probability[0]
      maps[k].append(probability[valid])
    masks.append(g.pad(sample['mask'])[..., 0][valid] > 0)

  blurred = np.concatenate(masks)
  tiled = f', scored as {FLAGS.tile}x{FLAGS.tile} tiles' if FLAGS.tile else ''
  print(
    f'{len(source)} images of {FLAGS.data} ({FLAGS.split}){tiled}, {FLAGS.checkpoint}; '
    f'blurred pixels: {blurred.mean():.3f}'
  )
  print(
    f'| block | ROC AUC | recall at {model.keep_threshold} | precision at '
    f'{model.keep_threshold} | best precision at recall >= {FLAGS.recall} |'
  )
  print('| --- | --- | --- | --- | --- |')
  for block, m in zip(blocks, maps):
    r = ranking(np.concatenate(m), blurred, model.keep_threshold, FLAGS.recall)
    print(
      f'| {block.label} | {r["auc"]:.3f} | {r["recall"]:.3f} | {r["precision"]:.3f} | '
      f'{r["best_precision"]:.3f} |'
    )


if __name__ == '__main__':
  _define_flags()
  cli.run(main, quiet=True)
