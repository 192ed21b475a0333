"""Training crops: the blur-aware crop of LBAG / LMD-ViT, and flips.

All functions take and return examples (uint8 `blur`, `sharp` [H, W, 3], `mask`
[H, W, 1]; other keys pass through) and draw randomness only from `rng`.
"""

from __future__ import annotations

import numpy as np

from lmdvit_jax.data.examples import IMAGE_KEYS, DataError, Example


def mask_runs(mask: np.ndarray) -> np.ndarray:
  """The blurred pixels of a mask [H, W] or [H, W, 1] as runs along rows.

  Returns:
    int32 [R, 3]: (row, first column, column past the last) of every run of
    nonzero pixels, in row-major order. A few thousand runs describe a
    2152x1436 mask of blobs, so a crop can be drawn without scanning the mask.
  """
  h, w = mask.shape[:2]
  padded = np.zeros((h, w + 2), np.int8)
  padded[:, 1:-1] = np.asarray(mask).reshape(h, w) != 0
  edges = np.diff(padded, axis=1)
  rows, starts = np.nonzero(edges == 1)
  _, stops = np.nonzero(edges == -1)
  return np.stack([rows, starts, stops], axis=1).astype(np.int32)


def _draw_blurred(
  rng: np.random.Generator,
  mask: np.ndarray,
  runs: np.ndarray | None,
  rows: tuple[int, int],
  cols: tuple[int, int],
) -> tuple[int, int] | None:
  """A uniformly drawn blurred pixel (y, x) of the box rows x cols, or None
  if the box has none. With `runs` (`mask_runs(mask)`) the same pixel is
  drawn, from the same draw of `rng`, without reading the mask."""
  if runs is None:
    ys, xs = np.nonzero(mask.reshape(mask.shape[:2])[rows[0] : rows[1], cols[0] : cols[1]])
    if not ys.size:
      return None
    i = rng.integers(ys.size)
    return int(ys[i]) + rows[0], int(xs[i]) + cols[0]
  runs = runs[(runs[:, 0] >= rows[0]) & (runs[:, 0] < rows[1])]
  starts = np.clip(runs[:, 1], *cols)
  lengths = np.clip(runs[:, 2], *cols) - starts
  ends = np.cumsum(lengths, dtype=np.int64)
  if not ends.size or not ends[-1]:
    return None
  i = rng.integers(int(ends[-1]))
  k = int(np.searchsorted(ends, i, side='right'))  # The run holding the i-th pixel.
  return int(runs[k, 0]), int(starts[k] + i - (ends[k] - lengths[k]))


def crop_origin(
  rng: np.random.Generator,
  mask: np.ndarray,
  patch: int,
  blur_prob: float = 0.5,
  runs: np.ndarray | None = None,
) -> tuple[int, int, bool]:
  """Top-left corner of a patch x patch crop; mask is [H, W] or [H, W, 1].

  With probability `blur_prob`, and if the mask has blurred pixels, the crop is
  centred on a uniformly chosen blurred pixel at least half a patch from every
  border (so the crop fits); if all blurred pixels are nearer the border, the
  crop is the fitting one closest to centring on one of them. Otherwise the crop
  is uniform over all positions. `runs` (`mask_runs(mask)`, e.g. kept by a
  frame cache) gives the same corner without reading the mask.

  Returns:
    (y, x, centred_on_blur).
  """
  h, w = mask.shape[:2]
  if h < patch or w < patch:
    raise DataError(f'Image {h}x{w} is smaller than the {patch}x{patch} training patch.')
  if rng.random() < blur_prob:
    half = patch // 2
    # Centres c with c - half in [0, H - patch]: rows half .. H - patch + half.
    centre = _draw_blurred(
      rng, mask, runs, (half, h - patch + half + 1), (half, w - patch + half + 1)
    )
    if centre is not None:
      return centre[0] - half, centre[1] - half, True
    centre = _draw_blurred(rng, mask, runs, (0, h), (0, w))
    if centre is not None:
      return (
        int(np.clip(centre[0] - half, 0, h - patch)),
        int(np.clip(centre[1] - half, 0, w - patch)),
        True,
      )
  return int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1)), False


def blur_aware_crop(
  rng: np.random.Generator, example: Example, patch: int, blur_prob: float = 0.5
) -> Example:
  """Crops blur, sharp and mask to [patch, patch, C] at `crop_origin` (using
  the example's `mask_runs` where it has them)."""
  y, x, _ = crop_origin(rng, example['mask'], patch, blur_prob, example.get('mask_runs'))
  out = dict(example)
  for key in IMAGE_KEYS:
    out[key] = example[key][y : y + patch, x : x + patch]
  return out


def random_flips(
  rng: np.random.Generator, example: Example, horizontal: bool = True, vertical: bool = True
) -> Example:
  """Flips blur, sharp and mask together, each axis with probability 1/2.

  Flips are exact for motion blur: a flipped blurred image is the blur of the
  flipped scene by the flipped kernel.
  """
  flip_h = horizontal and rng.random() < 0.5
  flip_v = vertical and rng.random() < 0.5
  if not (flip_h or flip_v):
    return example
  out = dict(example)
  for key in IMAGE_KEYS:
    a = example[key]
    out[key] = a[:: -1 if flip_v else 1, :: -1 if flip_h else 1]
  return out
