"""Training crops: the blur-aware crop of LBAG / LMD-ViT, and flips.

All functions take and return examples (uint8 `blur`, `sharp` [H, W, 3], `mask`
[H, W, 1]; other keys pass through) and draw randomness only from `rng`.
"""

from __future__ import annotations

import numpy as np

from lmdvit_jax.data.examples import IMAGE_KEYS, DataError, Example


def crop_origin(rng: np.random.Generator, mask: np.ndarray, patch: int,
                blur_prob: float = 0.5) -> tuple[int, int, bool]:
  """Top-left corner of a patch x patch crop; mask is [H, W] or [H, W, 1].

  With probability `blur_prob`, and if the mask has blurred pixels, the crop is
  centred on a uniformly chosen blurred pixel at least half a patch from every
  border (so the crop fits); if all blurred pixels are nearer the border, the
  crop is the fitting one closest to centring on one of them. Otherwise the crop
  is uniform over all positions.

  Returns:
    (y, x, centred_on_blur).
  """
  h, w = mask.shape[:2]
  if h < patch or w < patch:
    raise DataError(f'Image {h}x{w} is smaller than the {patch}x{patch} training patch.')
  if rng.random() < blur_prob:
    m = mask.reshape(h, w)
    half = patch // 2
    # Centres c with c - half in [0, H - patch]: rows half .. H - patch + half.
    inner = m[half:h - patch + half + 1, half:w - patch + half + 1]
    ys, xs = np.nonzero(inner)
    if ys.size:
      i = rng.integers(ys.size)
      return int(ys[i]), int(xs[i]), True
    ys, xs = np.nonzero(m)
    if ys.size:
      i = rng.integers(ys.size)
      return (int(np.clip(ys[i] - half, 0, h - patch)),
              int(np.clip(xs[i] - half, 0, w - patch)), True)
  return int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1)), False


def blur_aware_crop(rng: np.random.Generator, example: Example, patch: int,
                    blur_prob: float = 0.5) -> Example:
  """Crops blur, sharp and mask to [patch, patch, C] at `crop_origin`."""
  y, x, _ = crop_origin(rng, example['mask'], patch, blur_prob)
  out = dict(example)
  for key in IMAGE_KEYS:
    out[key] = example[key][y:y + patch, x:x + patch]
  return out


def random_flips(rng: np.random.Generator, example: Example, horizontal: bool = True,
                 vertical: bool = True) -> Example:
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
    out[key] = a[::-1 if flip_v else 1, ::-1 if flip_h else 1]
  return out
