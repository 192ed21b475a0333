"""The geometric self-ensemble: the model on flipped and transposed copies of
an image, inside one compiled program, the outputs turned back and averaged.

`self_ensemble=N` (2, 4 or 8) runs transforms 0..N-1 of `dihedral`: N times
the work, less noise in the restoration. Keep maps come back as the share of
passes that kept each window; a shifted window grid, mirrored, is the same
grid one window further on (`undo_dihedral_windows`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from lmdvit_jax.models import LMDViT, pruning
from lmdvit_jax.models.lmdvit import STAGE_NAMES, matmul_precision

Array = TypeVar('Array', np.ndarray, jax.Array)

SELF_ENSEMBLES = (1, 2, 4, 8)


def dihedral(x: Array, t: int) -> Array:
  """Transform `t` (0-7) of `x` [N, H, W, ...] (numpy or jax): bit 0 flips W,
  bit 1 flips H, then bit 2 swaps H and W. Transforms 0-3 keep the shape, 4-7
  transpose it."""
  if t & 1:
    x = x[:, :, ::-1]
  if t & 2:
    x = x[:, ::-1]
  if t & 4:
    x = x.swapaxes(1, 2)
  return x


def undo_dihedral(x: Array, t: int) -> Array:
  """The inverse of `dihedral(., t)`."""
  if t & 4:
    x = x.swapaxes(1, 2)
  if t & 2:
    x = x[:, ::-1]
  if t & 1:
    x = x[:, :, ::-1]
  return x


def undo_dihedral_windows(decision: Array, t: int, shifted: bool) -> Array:
  """`undo_dihedral` of a keep map [N, gh, gw] over the window grid of a pass
  on `dihedral(image, t)`.

  A shifted grid's windows start half a window in; mirrored, they end half a
  window from the other side, which is the same grid one window further on
  (win_size is even): so a flip of a shifted map is also rolled by one window.
  """
  roll = -1 if shifted else 0
  xp = np if isinstance(decision, np.ndarray) else jnp
  if t & 4:
    decision = decision.swapaxes(1, 2)
  if t & 2:
    decision = xp.roll(decision[:, ::-1], roll, axis=1)
  if t & 1:
    decision = xp.roll(decision[:, :, ::-1], roll, axis=2)
  return decision


def decision_blocks(model: LMDViT) -> tuple[pruning.DecisionBlock, ...]:
  """The predicting blocks of `model` in the order of `LMDViTOutput.decisions`."""
  return pruning.decision_blocks(STAGE_NAMES, model.depths, model.prune_loc)


def pass_groups(passes: int) -> list[tuple[int, ...]]:
  """The first `passes` dihedral transforms grouped by output shape: those
  that keep the image's shape (0-3), then the transposing ones (4-7)."""
  return [g for g in (tuple(range(min(passes, 4))), tuple(range(4, passes))) if g]


def forward(model: LMDViT, params: Any, x: jax.Array, passes: int = 1, precision: str = 'default'):
  """`model` on canvases `x` [B, Hp, Wp, 3], averaged over `dihedral(x, t)`
  for t < `passes` (each pass turned back first), matmuls at `precision`
  (`MATMUL_PRECISIONS`).

  Returns:
    (restored [B, Hp, Wp, 3] clamped to [0, 1], per predicting block the
    share of passes that kept each window [B, gh, gw] (float32; in {0, 1}
    for one pass), per block the kept windows a fixed capacity dropped [B],
    summed over the passes).
  """
  b = x.shape[0]
  shifted = [block.shifted for block in decision_blocks(model)]
  restored: Any = 0.0
  decisions: list[Any] = [0.0] * len(shifted)
  dropped: list[Any] = [0] * len(shifted)
  for group in pass_groups(passes):
    # Passes of one shape run as one batch; scores and gate are large and
    # unused here, so leaving them out lets XLA skip materialising them.
    with matmul_precision(precision):
      out: Any = model.apply(
        {'params': params}, jnp.concatenate([dihedral(x, t) for t in group]), train=False
      )
    turned = jnp.clip(out.restored, 0.0, 1.0)
    for i, t in enumerate(group):
      part = slice(i * b, (i + 1) * b)
      restored = restored + undo_dihedral(turned[part], t)
      for k, s in enumerate(shifted):
        decisions[k] = decisions[k] + undo_dihedral_windows(
          out.decisions[k][part].astype(jnp.float32), t, s
        )
        dropped[k] = dropped[k] + out.dropped[k][part]
  return restored / passes, tuple(d / passes for d in decisions), tuple(dropped)
