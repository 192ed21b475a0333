"""Adaptive window pruning: which blocks predict, the confidence predictor, the
decision rule, the capacity policy and window gathering.

Everything pruning decides lives here; `adawpt.AdaWPTStage` asks this module
which of its blocks predict (`predicts`), how they shift (`block_shift`) and
what to keep (`decide`, with a rule from `DECISION_RULES`), and
`decision_blocks` lists the predicting blocks of a network in the order of
`LMDViTOutput.decisions` for evaluation and pictures.

The official model selects kept windows with boolean indexing, a data-dependent
shape. Here `plan_windows` ranks the windows of each image once per shift
parity (kept first; every block of that parity reuses the ranking), and a block
runs on static-size slices of that ranking: `[B*K, ws, ws, C]` windows are
gathered, run and scattered back. A fixed budget runs one slice of K windows;
`'exact'` mode loops over chunks of `chunk_size` windows, as many as the batch's
largest kept count needs, so at most one chunk is computed beyond that count
and one block body is compiled.
Slots past an image's kept count hold pruned windows; the block multiplies its
residual branches by the slot's validity, so such windows come back
bit-identical, exactly like windows that were never run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from lmdvit_jax.models import windows as win
from lmdvit_jax.models.attention import dense_init
from lmdvit_jax.models.feedforward import gelu

# LayerNorm epsilon of the official model (PyTorch default; flax's is 1e-6).
LN_EPS = 1e-5

# `'exact'` mode runs kept windows in chunks of 1/16 of a block's windows:
# finer chunks waste less but each chunk's matmuls pay a fixed dispatch cost.
DEFAULT_CHUNKS = 16

# In a pruning stage, block 0 predicts for the unshifted windows and block 1 for
# the shifted ones (AdaWPT-F); later blocks reuse their parity's decision (AdaWPT-P).
PREDICTING_BLOCKS = 2


def predicts(block: int) -> bool:
  """Whether block `block` of a pruning stage predicts its own decision."""
  return block < PREDICTING_BLOCKS


def block_shift(block: int, win_size: int) -> int:
  """Cyclic shift of block `block`'s windows: 0, ws/2, 0, ws/2, ..."""
  return 0 if block % 2 == 0 else win_size // 2


@dataclasses.dataclass(frozen=True)
class DecisionBlock:
  """A block that predicts a keep map: its stage, index in the stage, shift."""

  stage: str
  block: int
  shifted: bool

  @property
  def label(self) -> str:
    return f'{self.stage}.{self.block}'


def decision_blocks(
  stage_names: Sequence[str], depths: Sequence[int], prune_loc: Sequence[int]
) -> tuple[DecisionBlock, ...]:
  """The predicting blocks of a network, in the order of its `decisions`."""
  out: list[DecisionBlock] = []
  for name, depth, prune in zip(stage_names, depths, prune_loc):
    if prune:
      out.extend(DecisionBlock(name, b, block_shift(b, 2) > 0) for b in range(depth) if predicts(b))
  return tuple(out)


# Inference decision rules: (window keep probabilities [B, h, w], threshold) ->
# keep map in {0, 1}. A new rule is one entry here and the model's
# `decision_rule` naming it; training always samples Gumbel decisions.
DecisionRule = Callable[[jax.Array, float], jax.Array]
DECISION_RULES: dict[str, DecisionRule] = {
  # The paper's: keep a window whose keep probability exceeds the threshold.
  'threshold': lambda p, threshold: (p > threshold).astype(p.dtype),
}


class _DenseParams(nn.Module):
  """The `kernel` [in, out] and `bias` [out] of a linear layer, as `nn.Dense`
  names and initialises them, for layers applied in pieces."""

  in_features: int
  features: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param('kernel', dense_init, (self.in_features, self.features))
    return kernel, self.param('bias', nn.initializers.zeros, (self.features,))


class ConfidencePredictor(nn.Module):
  """Token logits of blurriness from local and image-global features.

  Linear, GELU, LayerNorm, Linear; the first C/2 channels stay per token and
  the last C/2 are replaced by their mean over all tokens of the image; then
  Linear(C, C/2), GELU, Linear(C/2, C/4), GELU, Linear(C/4, 2). Logit 0 is
  "keep" (blurry), logit 1 "prune".

  Computed with linearity in mind: the mean of the global half is taken before
  its part of the second Linear (a mean of a linear map is the map of the
  mean), and that half's contribution to the third Linear is computed once per
  image; no nonlinearity separates the second Linear's local half from the
  third Linear, so the two are one `[C, C/2]` matrix. Per token this costs
  1.625 C^2 multiply-adds instead of 2.625 C^2; the result is the same up to
  float rounding.
  """

  dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[B, H, W, C]` block input (before LN1) -> `[B, H, W, 2]` logits."""
    b, h, w, c = x.shape
    half = c // 2
    dense = lambda f, name: nn.Dense(f, kernel_init=dense_init, name=name)
    t = dense(c, 'in_linear1')(x.reshape(b, h * w, c))
    t = nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, name='in_norm')(gelu(t))
    k2, b2 = _DenseParams(c, c, name='in_linear2')()
    k3, b3 = _DenseParams(c, c // 2, name='out_linear1')()
    glob = t.mean(axis=1) @ k2[:, half:].astype(t.dtype) + b2[half:].astype(t.dtype)  # [B, C/2]
    # Everything but the per-token product, once per image: [B, C/2].
    per_image = glob @ k3[half:] + b2[:half] @ k3[:half] + b3
    local = k2[:, :half] @ k3[:half]  # [C, C/2]: second Linear's local half, then the third's
    t = gelu(t @ local.astype(t.dtype) + per_image[:, None, :].astype(t.dtype))
    t = gelu(dense(c // 4, 'out_linear2')(t))
    return dense(2, 'out_linear3')(t).reshape(b, h, w, 2)


def is_predictor(path: Sequence[Any]) -> bool:
  """Whether a params-tree key path lies inside a confidence predictor (the
  `predictor_{i}` modules of a pruning stage)."""
  return any(str(getattr(k, 'key', k)).startswith('predictor_') for k in path)


def window_logits(token_logits: jax.Array, win_size: int, shift: int) -> jax.Array:
  """`[B, H, W, 2]` token logits -> `[B, H/ws, W/ws, 2]` logits of the windows a
  block with this shift cuts (the map rolled by -shift, then averaged)."""
  return win.window_mean(win.roll(token_logits, -shift), win_size)


def keep_probability(window_logits: jax.Array) -> jax.Array:
  """`[..., 2]` logits -> `[...]` softmax probability of "keep"."""
  return jax.nn.softmax(window_logits, axis=-1)[..., 0]


def decide(
  window_logits: jax.Array,
  *,
  train: bool,
  threshold: float,
  rng: jax.Array | None = None,
  rule: str = 'threshold',
) -> jax.Array:
  """Decision layer: `[B, h, w, 2]` window logits -> `[B, h, w]` keep map in {0, 1}.

  Training draws a hard Gumbel-softmax sample (tau 1) whose gradient is that of
  the soft sample (straight-through); inference applies `DECISION_RULES[rule]`
  to the keep probability.
  """
  if not train:
    return DECISION_RULES[rule](keep_probability(window_logits), threshold)
  if rng is None:
    raise ValueError('training decisions need an rng (the `gumbel` stream)')
  gumbels = jax.random.gumbel(rng, window_logits.shape, window_logits.dtype)
  soft = jax.nn.softmax(window_logits + gumbels, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), 2, dtype=soft.dtype)
  return (hard - jax.lax.stop_gradient(soft) + soft)[..., 0]


@flax.struct.dataclass
class WindowPlan:
  """Which windows of each image a pruned block runs.

  Attributes:
    order: `[B, nW + pad]` int32 window indices, kept windows first (most
      confident first), then pruned ones, then `pad` indices past nW.
    count: `[B]` int32 windows to run per image (kept, capped by the capacity).
    dropped: `[B]` int32 kept windows that did not fit the capacity.
  """

  order: jax.Array
  count: jax.Array
  dropped: jax.Array


def chunk_size(num_windows: int, chunks: int) -> int:
  """Windows per chunk of `'exact'` mode: `ceil(num_windows / chunks)`."""
  if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
    raise ValueError(f'capacity_chunks must be a positive integer, got {chunks!r}')
  return -(-num_windows // chunks)


def parse_capacity(value: str | float) -> str | float:
  """'exact' | 'masked' | a number in (0, 1] (as text or float) -> model `capacity`."""
  if isinstance(value, str):
    text = value.strip().lower()
    if text in ('exact', 'masked'):
      return text
    try:
      value = float(text)
    except ValueError:
      raise ValueError(
        f"capacity must be 'exact', 'masked' or a number in (0, 1], got {value!r}"
      ) from None
  value = float(value)
  if not 0 < value <= 1:
    raise ValueError(f'a fixed capacity must be in (0, 1], got {value}')
  return value


def parse_train_capacity(value: str | float) -> str | float:
  """'dense' | a number in (0, 1] (as text or float) -> the model's `train_capacity`."""
  if isinstance(value, str) and value.strip().lower() == 'dense':
    return 'dense'
  try:
    fraction = float(value)
  except (TypeError, ValueError):
    fraction = float('nan')
  if isinstance(value, bool) or not 0 < fraction <= 1:
    raise ValueError(f"train_capacity must be 'dense' or a kept fraction in (0, 1], got {value!r}")
  return fraction


def fixed_capacity(num_windows: int, fraction: float) -> int:
  """Windows per image for a fixed budget `fraction` in (0, 1]."""
  return min(num_windows, max(1, math.ceil(fraction * num_windows)))


def plan_windows(
  policy: jax.Array, confidence: jax.Array, capacity: int | None = None, pad: int = 0
) -> WindowPlan:
  """Ranks the windows of each image for gathering.

  Args:
    policy: `[B, nW]` keep map in {0, 1}.
    confidence: `[B, nW]` keep probability, used to rank kept windows (and to
      choose which ones to drop when a fixed capacity overflows).
    capacity: fixed capacity K per image, or None for `'exact'` mode.
    pad: distinct indices past nW appended to the ranking, so that a last
      chunk may run past nW (`'exact'` mode); their writes are dropped.
  """
  kept = jnp.sum(policy > 0, axis=-1).astype(jnp.int32)
  # Kept windows rank above pruned ones whatever their confidence.
  key = jnp.where(policy > 0, 1.0 + confidence, confidence)
  order = jnp.argsort(-key, axis=-1, stable=True).astype(jnp.int32)
  if pad:
    b, nw = policy.shape
    past = jnp.broadcast_to(nw + jnp.arange(pad, dtype=jnp.int32), (b, pad))
    order = jnp.concatenate([order, past], axis=1)
  count = kept if capacity is None else jnp.minimum(kept, capacity)
  return WindowPlan(order=order, count=count, dropped=kept - count)


def gather_windows(windows: jax.Array, idx: jax.Array) -> jax.Array:
  """`[B, nW, ws, ws, C]`, window indices `[B, k]` -> `[B, k, ws, ws, C]`.

  Indices past `nW` (padding of the last chunk) read window `nW - 1`.
  """
  with jax.named_scope('gather_windows'):  # Named for profiles (benchmarks.inference_parts).
    return jnp.take_along_axis(windows, idx[:, :, None, None, None], axis=1, mode='clip')


def scatter_windows(windows: jax.Array, idx: jax.Array, updated: jax.Array) -> jax.Array:
  """Writes `updated` `[B, k, ws, ws, C]` to windows `idx` `[B, k]`; indices past nW are dropped."""
  b_idx = jnp.arange(windows.shape[0])[:, None]
  # Each row of idx is a slice of a permutation, padded with distinct indices
  # past nW: no write collides.
  with jax.named_scope('scatter_windows'):
    return windows.at[b_idx, idx].set(updated, unique_indices=True, mode='drop')
