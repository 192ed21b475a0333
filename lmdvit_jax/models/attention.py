"""Window multi-head self-attention (W-MSA) with a relative position bias."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmdvit_jax.models import windows as win

# Matches the official initialisation of linear layers (truncated normal, std 0.02).
dense_init = nn.initializers.truncated_normal(stddev=0.02)

# Logit penalty between tokens of different Swin shift regions (official value).
SHIFT_MASK_PENALTY = -100.0


class WindowAttention(nn.Module):
  """W-MSA over the tokens of each window.

  Attributes:
    dim: channels C.
    num_heads: heads; C must be divisible by it.
    win_size: window side ws (N = ws * ws tokens).
    dtype: compute dtype of the projections (softmax stays float32).
  """

  dim: int
  num_heads: int
  win_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, region_ids: jax.Array | None = None) -> jax.Array:
    """Attends within windows.

    Args:
      x: `[n, N, C]` window tokens.
      region_ids: optional `[n, N]` shift-region labels; tokens with different
        labels get `SHIFT_MASK_PENALTY` added to their logit.

    Returns:
      `[n, N, C]`.
    """
    n, tokens, c = x.shape
    heads, head_dim = self.num_heads, c // self.num_heads
    dense = lambda f, name: nn.Dense(f, kernel_init=dense_init, dtype=self.dtype, name=name)
    q = dense(c, 'to_q')(x).reshape(n, tokens, heads, head_dim)
    kv = dense(2 * c, 'to_kv')(x).reshape(n, tokens, 2, heads, head_dim)
    k, v = kv[:, :, 0], kv[:, :, 1]

    q = q * head_dim**-0.5
    logits = jnp.einsum('nqhd,nkhd->nhqk', q, k).astype(jnp.float32)

    ws = self.win_size
    table = self.param('relative_position_bias_table', dense_init, ((2 * ws - 1) ** 2, heads))
    index = win.relative_position_index(ws).reshape(-1)
    bias = table[index].reshape(tokens, tokens, heads).transpose(2, 0, 1)
    logits = logits + bias[None]
    if region_ids is not None:
      same = region_ids[:, :, None] == region_ids[:, None, :]
      logits = logits + jnp.where(same, 0.0, SHIFT_MASK_PENALTY)[:, None]

    attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('nhqk,nkhd->nqhd', attn, v).reshape(n, tokens, c)
    return dense(c, 'proj')(out)
