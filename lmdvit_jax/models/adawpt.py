"""Transformer block and the adaptive window pruning Transformer stage (AdaWPT)."""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmdvit_jax.models import pruning
from lmdvit_jax.models import windows as win
from lmdvit_jax.models.attention import WindowAttention
from lmdvit_jax.models.feedforward import WLeFF


class TransformerBlock(nn.Module):
  """LN, W-MSA, residual, LN, W-LeFF, residual, all inside windows.

  Both residual branches are multiplied by the window's keep value, so a window
  with keep 0 leaves the block bit-identical to how it came in (the official
  inference skips it; its training path multiplies the same way).
  """

  dim: int
  num_heads: int
  win_size: int
  mlp_ratio: float = 4.0
  modulator: bool = False
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, windows: jax.Array, keep: jax.Array, region_ids: jax.Array | None, train: bool
  ) -> jax.Array:
    """Runs the block on windows.

    Args:
      windows: `[n, ws, ws, C]`.
      keep: `[n]` keep value per window (hard 0/1; straight-through in training).
      region_ids: `[n, ws*ws]` shift-region labels, or None for unshifted blocks.
      train: enables stochastic depth (rng stream `dropout`).

    Returns:
      `[n, ws, ws, C]`.
    """
    n, ws, _, c = windows.shape
    k = keep.astype(windows.dtype)[:, None, None, None]
    norm = lambda name: nn.LayerNorm(epsilon=pruning.LN_EPS, use_fast_variance=False, name=name)

    h = (norm('norm1')(windows) * k).reshape(n, ws * ws, c)
    if self.modulator:
      # A learned [ws*ws, C] table added to every window (nn.Embedding init).
      h = h + self.param('modulator', nn.initializers.normal(1.0), (ws * ws, c))
    a = WindowAttention(c, self.num_heads, ws, dtype=self.dtype, name='attn')(h, region_ids)
    x = windows + self._drop_path(a.reshape(n, ws, ws, c), train) * k
    f = WLeFF(c, int(c * self.mlp_ratio), dtype=self.dtype, name='mlp')(norm('norm2')(x))
    return x + self._drop_path(f, train) * k

  def _drop_path(self, y: jax.Array, train: bool) -> jax.Array:
    # Stochastic depth per window: the official block applies it to a tensor
    # whose leading axis is batch x windows.
    if not train or self.drop_path == 0.0:
      return y
    keep_prob = 1.0 - self.drop_path
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep_prob, (y.shape[0], 1, 1, 1))
    return y * mask.astype(y.dtype) / keep_prob


# `train` (argument 4, counting the module) selects Python branches: static.
# Transformer blocks by name (the model's `block`): a new block is a module with
# TransformerBlock's attributes and call signature (windows, keep, region ids,
# train), registered here; every stage then builds it (docs/extending.md).
BLOCKS: dict[str, type[nn.Module]] = {'lewin': TransformerBlock}


@functools.cache
def _rematerialised(cls: Any) -> type[nn.Module]:
  return nn.remat(cls, static_argnums=(4,))  # `train` is static


def block_class(name: str, remat: bool) -> type[nn.Module]:
  """The block registered as `name`, rematerialised in the backward pass if `remat`."""
  if name not in BLOCKS:
    raise ValueError(f'block must be one of {sorted(BLOCKS)}, got {name!r}')
  return _rematerialised(BLOCKS[name]) if remat else BLOCKS[name]  # type: ignore[arg-type]


class AdaWPTStage(nn.Module):
  """A stage of Transformer blocks with adaptive window pruning.

  Blocks alternate shift 0 and ws/2. With pruning on, block 0 (AdaWPT-F of the
  unshifted parity) and block 1 (of the shifted parity) each predict window
  confidences and decide which windows to keep; later blocks (AdaWPT-P) reuse
  the decision, and at inference the window ranking, of their parity.

  Attributes:
    block: the name of the Transformer block in `BLOCKS`.
    remat: recompute each block's activations in the backward pass instead of
      storing them (training memory falls to about one block's worth).
    capacity: `'exact'`, `'masked'` (every window computed, outputs selected by
      the decision: the reference) or a float fixed budget in (0, 1].
    train_capacity: in training, `'dense'` (every window computed and
      multiplied by its straight-through decision, as the paper trains) or a
      fraction in (0, 1]: each parity's blocks run only the first K =
      ceil(fraction * nW) windows of its ranking, forward and backward.
    chunks: `'exact'` mode runs kept windows in chunks of `ceil(nW / chunks)`.
  """

  dim: int
  depth: int
  num_heads: int
  win_size: int
  mlp_ratio: float = 4.0
  modulator: bool = False
  prune: bool = True
  keep_threshold: float = 0.5
  decision_rule: str = 'threshold'
  block: str = 'lewin'
  drop_path: Sequence[float] = ()
  capacity: str | float = 'exact'
  chunks: int = pruning.DEFAULT_CHUNKS
  train_capacity: str | float = 'dense'
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool):
    """Runs the stage.

    Args:
      x: `[B, H, W, C]`.
      train: Gumbel decisions (rng `gumbel`) and stochastic depth.

    Returns:
      `(x, scores, decisions, dropped)`: the output `[B, H, W, C]`; per
      predicting block its token logits `[B, H, W, 2]`, keep map
      `[B, H/ws, W/ws]` and count of kept windows dropped by the capacity `[B]`.
    """
    b, h, w, _ = x.shape
    ws = self.win_size
    nh, nw = h // ws, w // ws
    policies = [jnp.ones((b, nh * nw), x.dtype)] * 2
    plans: list[pruning.WindowPlan | None] = [None, None]
    scores, decisions, dropped = [], [], []
    gathered = self.prune and not train and self.capacity != 'masked'
    # Pruned training: every block of a parity runs the same K windows of its plan.
    gathered_train = self.prune and train and self.train_capacity != 'dense'
    train_k = lambda n: pruning.fixed_capacity(n, float(self.train_capacity))

    for i in range(self.depth):
      parity = i % 2
      shift = pruning.block_shift(i, ws)
      if self.prune and pruning.predicts(i):
        logits = pruning.ConfidencePredictor(self.dim, name=f'predictor_{i}')(x)
        window_logits = pruning.window_logits(logits, ws, shift)
        rng = self.make_rng('gumbel') if train else None
        decision = pruning.decide(
          window_logits,
          train=train,
          threshold=self.keep_threshold,
          rng=rng,
          rule=self.decision_rule,
        )
        policies[parity] = decision.reshape(b, nh * nw) * policies[parity]
        scores.append(logits)
        decisions.append(policies[parity].reshape(b, nh, nw))
        if gathered:
          confidence = pruning.keep_probability(window_logits).reshape(b, nh * nw)
          if self.capacity == 'exact':  # chunks of the ranking may run past nW
            cap, pad = None, pruning.chunk_size(nh * nw, self.chunks)
          else:
            cap, pad = pruning.fixed_capacity(nh * nw, float(self.capacity)), 0
          plans[parity] = plan = pruning.plan_windows(policies[parity], confidence, cap, pad)
          dropped.append(plan.dropped)
        elif gathered_train:
          confidence = pruning.keep_probability(window_logits).reshape(b, nh * nw)
          plans[parity] = plan = pruning.plan_windows(
            jax.lax.stop_gradient(policies[parity]),
            jax.lax.stop_gradient(confidence),
            train_k(nh * nw),
          )
          dropped.append(plan.dropped)
        else:
          dropped.append(jnp.zeros((b,), jnp.int32))

      block = block_class(self.block, self.remat)(
        self.dim,
        self.num_heads,
        ws,
        self.mlp_ratio,
        self.modulator,
        self.drop_path[i] if i < len(self.drop_path) else 0.0,
        dtype=self.dtype,
        name=f'block_{i}',
      )
      wins = win.partition(win.roll(x, -shift), ws)
      regions = Regions(nh, nw, ws, shift) if shift else None
      chosen = plans[parity]
      if chosen is None or self.is_initializing():
        wins = _run_all(block, wins, policies[parity], regions, train)
      elif train:
        wins = _run_train_slice(block, wins, chosen, policies[parity], train_k(nh * nw), regions)
      else:
        wins = self._run_gathered(block, wins, chosen, regions)
      x = win.roll(win.reverse(wins, ws, h, w), shift)
    return x, scores, decisions, dropped

  def _run_gathered(
    self, block: nn.Module, wins: jax.Array, plan: pruning.WindowPlan, regions: Regions | None
  ) -> jax.Array:
    num_windows = wins.shape[1]
    if self.capacity != 'exact':
      k = pruning.fixed_capacity(num_windows, float(self.capacity))
      return _run_slice(block, wins, plan.order[:, :k], 0, plan.count, regions)
    # One compiled chunk, looped as often as the batch's largest kept count
    # needs: nothing kept is dropped, at most one chunk is computed beyond it.
    chunk = pruning.chunk_size(num_windows, self.chunks)
    trips = (jnp.max(plan.count) + chunk - 1) // chunk

    def body(mdl, carry):
      i, out = carry
      # The plan's ranking is padded by a chunk past nW (writes there are dropped).
      idx = jax.lax.dynamic_slice_in_dim(plan.order, i * chunk, chunk, axis=1)
      return i + 1, _run_slice(mdl, out, idx, i * chunk, plan.count, regions)

    _, wins = nn.while_loop(
      lambda mdl, carry: carry[0] < trips,  # type: ignore[arg-type,return-value]
      body,
      block,
      (jnp.zeros((), jnp.int32), wins),
    )
    return wins


class Regions(NamedTuple):
  """Where a shifted block's Swin regions are: its window grid, window and shift."""

  grid_h: int
  grid_w: int
  ws: int
  shift: int

  def of(self, window: jax.Array) -> jax.Array:
    """Region labels `[..., ws * ws]` of windows `window` `[...]`."""
    return win.shift_region_ids(window, *self)


def _run_all(
  block: nn.Module, wins: jax.Array, policy: jax.Array, regions: Regions | None, train: bool
) -> jax.Array:
  """Every window through the block, outputs selected by `policy` `[B, nW]`."""
  b, nwin, ws, _, c = wins.shape
  reg = None
  if regions is not None:
    reg = jnp.broadcast_to(regions.of(jnp.arange(nwin))[None], (b, nwin, ws * ws))
    reg = reg.reshape(b * nwin, -1)
  out = block(wins.reshape(b * nwin, ws, ws, c), policy.reshape(-1), reg, train)
  return out.reshape(wins.shape)


def _run_train_slice(
  block: nn.Module,
  wins: jax.Array,
  plan: pruning.WindowPlan,
  policy: jax.Array,
  k: int,
  regions: Regions | None,
) -> jax.Array:
  """Pruned training: the first `k` windows of the plan's ranking `[B, k]`
  through the block, each with its straight-through keep value, written back.

  The ranking puts kept windows first (most confident first), then the
  unkept ones nearest to being kept: slots the kept windows leave free run
  those with keep 0, which leaves them unchanged in the forward pass but
  gives their decision the gradient the dense step would (the block's
  residual branches times the keep value). Kept windows beyond `k` are not
  computed, as a fixed inference budget drops them.
  """
  b = wins.shape[0]
  ws, c = wins.shape[2], wins.shape[-1]
  idx = plan.order[:, :k]
  keep = jnp.take_along_axis(policy, idx, axis=1)  # Differentiable: the decisions' gradient.
  reg = None
  if regions is not None:
    reg = regions.of(idx).reshape(b * k, -1)
  out = block(
    pruning.gather_windows(wins, idx).reshape(b * k, ws, ws, c), keep.reshape(-1), reg, True
  )
  return pruning.scatter_windows(wins, idx, out.reshape(b, k, ws, ws, c))


def _run_slice(
  block: nn.Module,
  wins: jax.Array,
  idx: jax.Array,
  start: jax.Array | int,
  count: jax.Array,
  regions: Regions | None,
) -> jax.Array:
  """Runs windows `idx` `[B, k]` of `wins` `[B, nW, ws, ws, C]` and writes them back.

  `idx` holds plan slots `start .. start + k - 1`; slots at or past an image's
  `count` `[B]` run with keep 0, so they come back unchanged.
  """
  b, k = idx.shape
  ws, c = wins.shape[2], wins.shape[-1]
  sel = pruning.gather_windows(wins, idx)
  valid = ((start + jnp.arange(k))[None, :] < count[:, None]).astype(wins.dtype)
  reg = None
  if regions is not None:
    # Slots past the grid (the padded end of a ranking) hold indices >= nW; their
    # writes are dropped, and the clip keeps their labels those of a real window.
    reg = regions.of(jnp.clip(idx, 0, regions.grid_h * regions.grid_w - 1)).reshape(b * k, -1)
  out = block(sel.reshape(b * k, ws, ws, c), valid.reshape(-1), reg, False)
  return pruning.scatter_windows(wins, idx, out.reshape(b, k, ws, ws, c))
