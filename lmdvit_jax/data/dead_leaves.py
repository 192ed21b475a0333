"""Dead-leaves images: procedural pictures with the statistics of photographs.

Discs ("leaves") of radii drawn from a power law (density ~ r^-3, so the
picture looks alike at every scale, as natural images do) fall on a canvas,
each hiding what lies beneath; each leaf is textured (a colour, a shading
gradient and a sinusoidal or noisy pattern), so edges, flat areas and fine
texture all occur, at every orientation. Networks trained on such images are
known to carry to photographs better than ones trained on a few photos: they
cannot learn the photos.

`names(split)` and `load(name)` are the `deadleaves` photo source of
`synthetic` data (deterministic images, made on first use and kept).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageFilter

SIZE = 320  # Side of each image (training crops objects and backgrounds from it).
COUNT = {'train': 64, 'val': 8, 'test': 8}
RADII = (3.0, 120.0)
MAX_LEAVES = 6000
_SEED = {'train': 0, 'val': 1, 'test': 2}


def _radius(rng: np.random.Generator) -> float:
  """A radius with density proportional to r^-3 on RADII (inverse CDF)."""
  lo, hi = RADII
  u = rng.random()
  return float((lo**-2 - u * (lo**-2 - hi**-2)) ** -0.5)


def _colour(rng: np.random.Generator) -> np.ndarray:
  """An RGB colour with the muted saturation of photographs (HSV, saturation
  mostly low), float32 [3]."""
  h, s, v = rng.random(), rng.beta(1.5, 3.0), rng.uniform(0.15, 0.95)
  k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
  return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
  """One dead-leaves image, uint8 [size, size, 3]."""
  canvas = np.broadcast_to(_colour(rng), (size, size, 3)).copy()  # what no leaf covers
  covered = np.zeros((size, size), bool)
  for _ in range(MAX_LEAVES):
    r = _radius(rng)
    cy, cx = rng.uniform(-r, size + r, 2)
    y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
    x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
    if y0 >= y1 or x0 >= x1:
      continue
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    # An ellipse, randomly squashed and turned: leaves are not all round.
    angle, squash = rng.uniform(0, np.pi), rng.uniform(0.5, 1.0)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / squash
    leaf = (u * u + v * v <= r * r) & ~covered[y0:y1, x0:x1]
    if not leaf.any():
      continue
    colour = _colour(rng)
    shade = 1 + rng.uniform(-0.3, 0.3) * (u / max(r, 1.0))
    if rng.random() < 0.5:  # stripes of a random period and direction
      period, phase, direction = (
        rng.uniform(2, 24),
        rng.uniform(0, 2 * np.pi),
        rng.uniform(0, np.pi),
      )
      wave = np.sin(2 * np.pi * (dx * np.cos(direction) + dy * np.sin(direction)) / period + phase)
      pattern = 1 + rng.uniform(0.05, 0.5) * wave
    else:  # grain
      pattern = 1 + rng.uniform(0.0, 0.25) * rng.standard_normal(leaf.shape).astype(np.float32)
    texture = colour[None, None, :] * (shade * pattern)[..., None]
    canvas[y0:y1, x0:x1][leaf] = texture[leaf]
    covered[y0:y1, x0:x1] |= leaf
    if covered.all():
      break
  out = Image.fromarray(np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8))
  # A lens's softness, so leaf edges are not aliased stair steps.
  return np.asarray(out.filter(ImageFilter.GaussianBlur(0.6)))


def names(split: str = 'train') -> list[str]:
  """The split's images, by name (`load` makes one)."""
  if split not in COUNT:
    raise ValueError(f'split must be one of {tuple(COUNT)}, got {split!r}')
  return [f'{split}/{i}' for i in range(COUNT[split])]


@functools.cache
def load(name: str) -> np.ndarray:
  """The image `name` of `names`, uint8 [SIZE, SIZE, 3] (made once, then kept)."""
  split, index = name.split('/')
  return image(np.random.default_rng([0x6C65, _SEED[split], int(index)]))
