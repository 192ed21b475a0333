"""A second local-blur set that shares nothing with training: other photographs,
another way of making blur.

    outside?count=12&size=384x256&seed=0        (a data spec; always held out)

It exists to tell whether a model learnt blur or learnt the training
generator (`synthetic`). Everything differs from that generator:

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

import functools
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lmdvit_jax.data import image_files
from lmdvit_jax.data.examples import DataError, Example, Source
from lmdvit_jax.data.synthetic import (PhotoPool, _random_crop, add_moving_object,
                                       srgb_to_linear, texture_energy, trajectory_kernel)

PHOTO_DIR = Path(__file__).resolve().parent / 'outside_photos'
BLUR_LENGTH = (3.0, 12.0)
SHAPES = ('polygon', 'ellipse', 'box')
# Random stream of this generator, apart from every split of `synthetic`.
STREAM = 0x6F75


def photos(folder: str | os.PathLike | None = None) -> PhotoPool:
  """The outside set's photographs: the shipped ones, or every image of `folder`."""
  folder = Path(folder) if folder else PHOTO_DIR
  if not folder.is_dir():
    raise FileNotFoundError(f'no photo folder at {folder}')
  paths = sorted(p for p in folder.rglob('*') if p.suffix.lower() in image_files.IMAGE_SUFFIXES)
  if not paths:
    raise DataError(f'{folder}: no photographs for the outside set')
  return PhotoPool([str(p) for p in paths],
                   lambda path: np.asarray(image_files.open_image(path).convert('RGB')),
                   f'outside photos in {folder}')


def shake_trajectory(rng: np.random.Generator, length: float) -> np.ndarray:
  """Positions [N, 2] (dy, dx) at equal times: the velocity random-walks with
  inertia, then the path is scaled to arc length `length`; mid-exposure at 0."""
  n = int(np.ceil(6 * length)) | 1
  velocity = rng.normal(0, 1, 2)
  steps = []
  for _ in range(n - 1):
    velocity = 0.85 * velocity + rng.normal(0, 0.6, 2)  # inertia, then a push
    steps.append(velocity.copy())
  steps = np.asarray(steps)
  steps *= length / max(np.linalg.norm(steps, axis=1).sum(), 1e-9)
  path = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
  return path - path[n // 2]


def hard_shape_alpha(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """A hard-edged shape in an h x w box, anti-aliased (4x supersampled), [h, w]
  float32, 0 on the box border."""
  s = 4
  canvas = Image.new('L', (w * s, h * s), 0)
  draw = ImageDraw.Draw(canvas)
  kind = SHAPES[rng.integers(len(SHAPES))]
  cy, cx, ry, rx = h * s / 2, w * s / 2, (h * s / 2 - s) * 0.95, (w * s / 2 - s) * 0.95
  if kind == 'polygon':
    k = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.45, 1.0, k)
    draw.polygon([(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a))
                  for a, r in zip(angles, radii)], fill=255)
  elif kind == 'ellipse':
    f = rng.uniform(0.6, 1.0, 2)
    draw.ellipse([cx - rx * f[0], cy - ry * f[1], cx + rx * f[0], cy + ry * f[1]], fill=255)
  else:
    f = rng.uniform(0.5, 0.95, 2)
    draw.rounded_rectangle([cx - rx * f[0], cy - ry * f[1], cx + rx * f[0], cy + ry * f[1]],
                           radius=int(min(rx, ry) * rng.uniform(0.05, 0.4)), fill=255)
  return np.asarray(canvas.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=int(quality))
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))


def synthesize(rng: np.random.Generator, pool: PhotoPool, size: tuple[int, int]) -> Example:
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
  # Capture: Poisson-Gaussian noise in linear light (one field for both), a display gamma.
  gain, read = rng.uniform(0.0, 0.004), rng.uniform(0.0, 0.006)
  noise = rng.normal(0, 1, (h, w, 3)).astype(np.float32) * np.sqrt(gain * sharp + read**2)
  gamma = rng.uniform(1.8, 2.6)
  pair = np.clip(np.stack([blurred, sharp]) + noise, 0.0, 1.0) ** (1 / gamma)
  pair = np.clip(np.round(pair * 255.0), 0, 255).astype(np.uint8)
  quality = int(rng.integers(75, 96))
  blur_jpeg, sharp_jpeg = _jpeg(pair[0], quality), _jpeg(pair[1], quality)
  blur_jpeg = np.where(swept[..., None], blur_jpeg, sharp_jpeg)
  return {'blur': blur_jpeg, 'sharp': sharp_jpeg, 'mask': swept.astype(np.uint8)[..., None]}


class OutsideSource(Source):
  """`count` outside-set triples of a fixed size; example i depends only on (seed, i)."""

  def __init__(self, count: int = 12, size: int | tuple[int, int] = (256, 384), seed: int = 0,
               photos_folder: str | os.PathLike | None = None):
    if count < 1:
      raise ValueError(f'count must be positive, got {count}')
    self.count = int(count)
    self.size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if min(self.size) < 32:
      raise ValueError(f'size must be at least 32 pixels, got {self.size}')
    self.seed = int(seed)
    self.photos_folder = photos_folder

  @functools.cached_property
  def pool(self) -> PhotoPool:
    return photos(self.photos_folder)

  def __len__(self) -> int:
    return self.count

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop('pool', None)
    return state

  def _example(self, index: int) -> Example:
    rng = np.random.default_rng([self.seed, STREAM, index])
    example = synthesize(rng, self.pool, self.size)
    example['name'] = f'outside_{self.seed}_{index:06d}'
    return example
