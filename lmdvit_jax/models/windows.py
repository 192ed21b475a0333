"""Window geometry: partition, reverse, shift regions, relative position index.

Windows are kept per image as `[B, nW, ws, ws, C]`, with `nW = (H/ws) * (W/ws)`
ordered row-major over the window grid, which is the order the official code
uses once its batch axis is split off again. The functions accept numpy or jax
arrays (they only use `reshape` / `transpose`), so static tables are built with
numpy at trace time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array | np.ndarray


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


@functools.lru_cache(maxsize=None)
def shift_region_ids(h: int, w: int, ws: int, shift: int) -> np.ndarray:
  """Swin region label of every token of every window of the rolled map.

  The rolled map is cut into 3 x 3 regions by `[0:-ws]`, `[-ws:-shift]`,
  `[-shift:]` along each axis; tokens of one window may attend to each other
  only when their labels agree. Storing labels (`[nW, ws*ws]`, int32) instead of
  the `[nW, N, N]` additive mask keeps full-resolution images cheap: the mask
  is rebuilt inside the attention from the labels of the windows actually run.
  """
  img = np.zeros((h, w), np.int32)
  cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
  label = 0
  for hs in cuts:
    for wsl in cuts:
      img[hs, wsl] = label
      label += 1
  return partition(img[None, :, :, None], ws).reshape(-1, ws * ws)


@functools.lru_cache(maxsize=None)
def relative_position_index(ws: int) -> np.ndarray:
  """`[N, N]` index into the `[(2ws-1)^2, heads]` bias table (Swin layout)."""
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing='ij'))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (ws - 1)
  return (rel[..., 0] * (2 * ws - 1) + rel[..., 1]).astype(np.int32)
