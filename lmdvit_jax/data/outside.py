"""A second local-blur set that shares nothing with training: other photographs,
another way of making blur.

    outside?count=12&size=384x256&seed=0        (a data spec; always held out)

It exists to tell whether a model learnt blur or learnt the training
generator (`synthetic`). Everything differs from that generator's default
(`preset=realistic`, which the shipped weights learnt from); its `varied`
preset draws the same kinds of outline, motion and capture, over wider
ranges, but never these photographs:

  photographs  nine nature photographs of Debian's mate-backgrounds package
               (`outside_photos/`, GPL-2+), in no split of `synthetic`; or
               `photos=FOLDER`;
  objects      1-3 hard-edged shapes (polygons, ellipses, rounded boxes), not
               soft random blobs; cut from another photo or, a third of the
               time, from the background's own photo, at another exposure
               (x0.6-1.6 in linear light);
  motion       camera-shake-like paths: a velocity that random-walks with
               inertia, sampled at equal times, so the kernel is uneven where
               the object slowed down (not constant-speed lines and arcs),
               3-12 px long;
  capture      a display gamma of 1.8-2.6 instead of sRGB's curve, signal-
               dependent (Poisson-Gaussian) noise, and JPEG at quality 75-95.

Outside the mask blur and sharp are bit-identical (the same noise field goes
into both, and pixels outside the mask take the sharp image's JPEG), so the
PSNR outside the mask measures only what the model changed.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
from pathlib import Path

import numpy as np

from lmdvit_jax import image_io
from lmdvit_jax.data.examples import DataError, Example, GeneratedSource
from lmdvit_jax.data.motion import shake_trajectory, trajectory_kernel
from lmdvit_jax.data.photos import PhotoPool
from lmdvit_jax.data.synthetic import (
  Camera,
  _random_crop,
  add_moving_object,
  camera_capture,
  hard_shape_alpha,
  srgb_to_linear,
  texture_energy,
)

PHOTO_DIR = Path(__file__).resolve().parent / 'outside_photos'
BLUR_LENGTH = (3.0, 12.0)
CAMERA = Camera(gamma=(1.8, 2.6), gain=0.004, read=0.006, jpeg_quality=(75, 95))
# Random stream of this generator, apart from every split of `synthetic`.
STREAM = 0x6F75


def photos(folder: str | os.PathLike | None = None) -> PhotoPool:
  """The outside set's photographs: the shipped ones, or every image of `folder`."""
  folder = Path(folder) if folder else PHOTO_DIR
  if not folder.is_dir():
    raise FileNotFoundError(f'no photo folder at {folder}')
  paths = sorted(p for p in folder.rglob('*') if p.suffix.lower() in image_io.IMAGE_SUFFIXES)
  if not paths:
    raise DataError(f'{folder}: no photographs for the outside set')
  return PhotoPool(
    [str(p) for p in paths],
    lambda path: np.asarray(image_io.open_image(path).convert('RGB')),
    f'outside photos in {folder}',
  )


def synthesize(
  rng: np.random.Generator, pool: Sequence[np.ndarray], size: tuple[int, int]
) -> Example:
  """One triple of the outside set (see the module docstring)."""
  h, w = size
  n = len(pool)
  bg = int(rng.integers(n))
  background = srgb_to_linear(_random_crop(rng, pool[bg], h, w, max_zoom=1.6))
  sharp, blurred = background.copy(), background.copy()
  swept = np.zeros((h, w), bool)
  for _ in range(int(rng.integers(1, 4))):
    source = bg if (n == 1 or rng.random() < 1 / 3) else int((bg + rng.integers(1, n)) % n)
    side = min(h, w)
    oh = max(8, round(side * rng.uniform(0.15, 0.5)))
    ow = max(8, round(oh * rng.uniform(0.5, 2.0)))
    crops = [_random_crop(rng, pool[source], oh, ow, max_zoom=1.6) for _ in range(3)]
    obj = np.clip(srgb_to_linear(max(crops, key=texture_energy)) * rng.uniform(0.6, 1.6), 0, 1)
    alpha = hard_shape_alpha(rng, oh, ow)
    y0 = int(rng.integers(-oh // 4, h - 3 * oh // 4 + 1))
    x0 = int(rng.integers(-ow // 4, w - 3 * ow // 4 + 1))
    kernel = trajectory_kernel(shake_trajectory(rng, rng.uniform(*BLUR_LENGTH)))
    add_moving_object(sharp, blurred, swept, obj, alpha, kernel, (y0, x0))
  blurred = np.where(swept[..., None], blurred, sharp)
  blur, sharp = camera_capture(rng, blurred, sharp, swept, CAMERA)
  return {'blur': blur, 'sharp': sharp, 'mask': swept.astype(np.uint8)[..., None]}


class OutsideSource(GeneratedSource):
  """`count` outside-set triples of a fixed size; example i depends only on (seed, i)."""

  min_size = 32

  def __init__(
    self,
    count: int = 12,
    size: int | tuple[int, int] = (256, 384),
    seed: int = 0,
    photos_folder: str | os.PathLike | None = None,
  ):
    super().__init__(count, size, seed)
    self.photos_folder = photos_folder

  def _photo_pool(self) -> PhotoPool:
    return photos(self.photos_folder)

  def _example(self, index: int) -> Example:
    rng = np.random.default_rng([self.seed, STREAM, index])
    example = synthesize(rng, self.photos, self.size)
    example['name'] = f'outside_{self.seed}_{index:06d}'
    return example
