"""Window geometry: partition, reverse, shift regions, relative position index.

Windows are kept per image as `[B, nW, ws, ws, C]`, with `nW = (H/ws) * (W/ws)`
ordered row-major over the window grid, which is the order the official code
uses once its batch axis is split off again. `partition` and `reverse` accept
numpy or jax arrays (they only use `reshape` / `transpose`); tables that grow
with the image are computed in the program, never stored as constants.
"""

from __future__ import annotations

import functools
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

# numpy in, numpy out; jax in, jax out.
Array = TypeVar('Array', np.ndarray, jax.Array)


def partition(x: Array, ws: int) -> Array:
  """`[B, H, W, C]` -> `[B, nW, ws, ws, C]` (row-major window grid)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // ws, ws, w // ws, ws, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // ws) * (w // ws), ws, ws, c)


def reverse(windows: Array, ws: int, h: int, w: int) -> Array:
  """`[B, nW, ws, ws, C]` -> `[B, H, W, C]`; inverse of `partition`."""
  b, _, _, _, c = windows.shape
  x = windows.reshape(b, h // ws, w // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def window_mean(x: jax.Array, ws: int) -> jax.Array:
  """Averages each ws x ws window: `[B, H, W, C]` -> `[B, H/ws, W/ws, C]`."""
  b, h, w, c = x.shape
  return x.reshape(b, h // ws, ws, w // ws, ws, c).mean(axis=(2, 4))


def roll(x: jax.Array, shift: int) -> jax.Array:
  """Cyclic shift of `[B, H, W, C]` by `(shift, shift)` over H and W."""
  if shift == 0:
    return x
  return jnp.roll(x, (shift, shift), axis=(1, 2))


def shift_region_ids(window: jax.Array, grid_h: int, grid_w: int, ws: int, shift: int) -> jax.Array:
  """Swin region label of every token of windows `window` of the rolled map.

  The rolled map is cut into 3 x 3 regions by `[0:-ws]`, `[-ws:-shift]`,
  `[-shift:]` along each axis; tokens of one window may attend to each other
  only when their labels agree. Only the last window row and column hold more
  than region 0, so the labels follow from a window's grid position: they are
  computed for the windows actually run, in the program, and no table of the
  image's size is stored (a 20000x20000 export would carry gigabytes of it).

  Args:
    window: int `[...]`, indices into the row-major `grid_h x grid_w` window grid.

  Returns:
    int32 `[..., ws * ws]`: `3 * row region + column region` per token.
  """
  window = jnp.asarray(window, jnp.int32)
  row, col = window // grid_w, window % grid_w
  token = jnp.arange(ws, dtype=jnp.int32) >= ws - shift  # The last `shift` rows (columns).
  ry = jnp.where((row == grid_h - 1)[..., None], 1 + token, 0)  # [..., ws]
  rx = jnp.where((col == grid_w - 1)[..., None], 1 + token, 0)
  labels = 3 * ry[..., :, None] + rx[..., None, :]  # [..., ws, ws]
  return labels.reshape(window.shape + (ws * ws,)).astype(jnp.int32)


@functools.cache
def relative_position_index(ws: int) -> np.ndarray:
  """`[N, N]` index into the `[(2ws-1)^2, heads]` bias table (Swin layout)."""
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing='ij'))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (ws - 1)
  return (rel[..., 0] * (2 * ws - 1) + rel[..., 1]).astype(np.int32)
