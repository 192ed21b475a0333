r"""How well can a network made only to find blur rank blurred windows?

    python -m analyses.blur_detection_ceiling
    python -m analyses.blur_detection_ceiling --steps=3000 --width=24

The pruning precision of a trained LMD-ViT is read off its confidence
predictors, small heads on the features of the blocks they gate
(`pruning_ranking.py`). This script asks what the blurred image itself allows:
it trains a small U-Net (four scales, receptive field well over 100 px) for
one thing only, a per-pixel blur mask from the blurred image, with the
class-balanced cross-entropy of the demo's pruning loss, on the demo's
training data (`--train_data`, training photos). It then scores it on the
held-out set and the outside set (`--data`, test photos; `outside` shares
neither photos nor blur model with training) as `pruning_ranking.py` scores the
predictors: the pixel probabilities averaged over `--windows` pixel windows
(the decisions of the demo's full- and half-resolution pruning stages are 4x4
and 8x8 pixel windows), pooled over the pixels of the set: ROC AUC, and the
best precision of any threshold whose recall is at least `--recall`.

If a detector trained for minutes on the same data ranks far better than the
predictors, their features are what limits pruning precision; if it ranks no
better, the blurred image does not tell the windows apart any better at this
scale, and no predictor will.
"""

from __future__ import annotations

import time

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from analyses.pruning_ranking import ranking
from lmdvit_jax import cli
from lmdvit_jax.data import specs

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a program, so that tests can import the module.
  flags.DEFINE_string(
    'train_data', 'synthetic?size=128&count=1000000', 'training data spec (split train)'
  )
  flags.DEFINE_multi_string(
    'data',
    ['synthetic?size=384x256&count=16', 'outside?size=384x256&count=12'],
    'held-out data specs (split test), repeat the flag for more: the '
    "demo's held-out set and the outside set by default",
  )
  flags.DEFINE_string(
    'validation_data',
    'synthetic?size=384x256&count=16&seed=1',
    'also scored: data spec of training photos (split train); empty: none',
  )
  flags.DEFINE_integer('steps', 1500, 'training steps')
  flags.DEFINE_integer('batch', 8, 'images per step')
  flags.DEFINE_integer('width', 16, 'channels at full resolution (doubling per scale, at most 4x)')
  flags.DEFINE_float('lr', 2e-3, 'peak learning rate (cosine decay after at most 50 warm-up steps)')
  flags.DEFINE_list(
    'windows', ['4', '8'], 'window sides in pixels the probabilities are pooled over'
  )
  flags.DEFINE_float('recall', 0.9, 'recall the best precision is read at')
  flags.DEFINE_integer('seed', 0, 'initialisation seed')


class BlurDetector(nn.Module):
  """A small U-Net: blurred image `[B, H, W, 3]` -> blur logits `[B, H, W]`.

  H and W must be multiples of 8.
  """

  width: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def block(h, features):
      for _ in range(2):
        h = nn.gelu(nn.Conv(features, (3, 3))(h))
      return h

    widths = [self.width * min(2**i, 4) for i in range(4)]
    skips = []
    h = x * 2.0 - 1.0
    for i, features in enumerate(widths):
      h = block(h, features)
      if i < len(widths) - 1:
        skips.append(h)
        h = nn.avg_pool(h, (2, 2), (2, 2))
    for skip in reversed(skips):
      b, hh, ww, c = h.shape
      h = jax.image.resize(h, (b, hh * 2, ww * 2, c), 'bilinear')
      h = block(jnp.concatenate([h, skip], axis=-1), skip.shape[-1])
    return nn.Conv(1, (1, 1))(h)[..., 0]


def balanced_bce(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Cross-entropy with blurred and sharp pixels weighted half each, `[B, H, W]`."""
  positive = jnp.clip(mask.mean(), 1e-3, 1 - 1e-3)
  weights = jnp.where(mask > 0, 0.5 / positive, 0.5 / (1 - positive))
  return (weights * optax.sigmoid_binary_cross_entropy(logits, mask)).mean()


def window_mean(probability: np.ndarray, side: int) -> np.ndarray:
  """`[H, W]` -> the same map with every `side` x `side` window replaced by its mean."""
  h, w = probability.shape
  pooled = probability.reshape(h // side, side, w // side, side).mean(axis=(1, 3))
  return np.repeat(np.repeat(pooled, side, axis=0), side, axis=1)


def batches(spec: str, batch: int):
  """Endless `(blur [B, H, W, 3], mask [B, H, W])` float32 batches of the training split."""
  source = specs.open_source(spec, split='train')
  i = 0
  while True:
    samples = [source[(i + k) % len(source)] for k in range(batch)]
    i += batch
    yield (
      np.stack([np.asarray(s['blur'], np.float32) for s in samples]),
      np.stack([np.asarray(s['mask'], np.float32)[..., 0] for s in samples]),
    )


def train(model: BlurDetector, steps: int, batch: int, lr: float, seed: int, spec: str):
  """Trains the detector; returns its params. Prints the loss every 10% of the steps."""
  data = batches(spec, batch)
  blur, _ = next(data)
  params = model.init(jax.random.PRNGKey(seed), jnp.asarray(blur))['params']
  optimizer = optax.adamw(
    optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 2), steps, lr * 0.01)
  )
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, blur, mask):
    loss, grads = jax.value_and_grad(
      lambda p: balanced_bce(model.apply({'params': p}, blur), mask)
    )(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  start, losses = time.time(), []
  for k in range(steps):
    blur, mask = next(data)
    params, state, loss = step(params, state, jnp.asarray(blur), jnp.asarray(mask))
    losses.append(float(loss))
    if (k + 1) % max(1, steps // 10) == 0:
      print(
        f'step {k + 1}: balanced BCE {np.mean(losses[-50:]):.4f}, {time.time() - start:.0f} s',
        flush=True,
      )
  return params


def main(argv):
  del argv
  model = BlurDetector(FLAGS.width)
  params = train(model, FLAGS.steps, FLAGS.batch, FLAGS.lr, FLAGS.seed, FLAGS.train_data)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))

  predict = jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({'params': p}, x)))
  sets = [(spec, 'test') for spec in FLAGS.data]
  if FLAGS.validation_data:
    sets.append((FLAGS.validation_data, 'train'))
  print(
    f'Blur detector: {n_params / 1e3:.0f} k params, {FLAGS.steps} steps of '
    f'{FLAGS.batch} images of {FLAGS.train_data} (train)'
  )
  print(
    f'| data | blurred pixels | decisions | ROC AUC | recall at 0.5 | precision at 0.5 | '
    f'best precision at recall >= {FLAGS.recall} |'
  )
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for spec, split in sets:
    source = specs.open_source(spec, split=split)
    maps, masks = {s: [] for s in [1] + [int(s) for s in FLAGS.windows]}, []
    for i in range(len(source)):
      sample = source[i]
      probability = np.asarray(predict(params, jnp.asarray(sample['blur'], jnp.float32)[None]))[0]
      for side in maps:
        maps[side].append((window_mean(probability, side) if side > 1 else probability).ravel())
      masks.append(np.asarray(sample['mask'])[..., 0].ravel() > 0)
    blurred = np.concatenate(masks)
    for side, m in maps.items():
      r = ranking(np.concatenate(m), blurred, 0.5, FLAGS.recall)
      name = 'per pixel' if side == 1 else f'{side}x{side} windows'
      print(
        f'| {spec} ({split}) | {blurred.mean():.3f} | {name} | {r["auc"]:.3f} | '
        f'{r["recall"]:.3f} | {r["precision"]:.3f} | {r["best_precision"]:.3f} |'
      )


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
