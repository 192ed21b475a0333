"""Seeded synthesis of local motion blur triples (blur, sharp, mask).

A soft-edged object cut from one photograph moves over a static background cut
from another one, while the camera stands still. In linear light, with `K` the
object's motion kernel (centred at mid-exposure) and `alpha` its matte:

    sharp   = alpha * F + (1 - alpha) * B
    blurred = K * (alpha * F) + (1 - K * alpha) * B

and the mask marks every pixel the object covered at some time during the
exposure. Outside the mask blurred and sharp are bit-identical, also after the
optional noise (the same noise field goes into both images, as scene texture).
`BlurSettings` and its named `PRESETS` say how objects, motion and capture are
drawn; `varied` draws hard-edged outlines too, other exposures, camera-shake
paths and a random camera (gamma, signal-dependent noise, JPEG).

Sharp photographs come from `photos` (named sets shipped inside PyPI
packages, dead leaves, or a folder), split into disjoint train, val and test
photos; trajectories and kernels from `motion`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from lmdvit_jax.data.examples import Example, GeneratedSource
from lmdvit_jax.data.motion import (
  MOTION_KINDS,
  TRAJECTORY_KINDS,
  full_convolve,
  random_trajectory,
  shake_trajectory,
  trajectory_kernel,
)
from lmdvit_jax.data.photos import _SPLIT_CODES, DEFAULT_PHOTO_SET, SPLITS, PhotoPool, photo_pool

# ---------------------------------------------------------------------------
# Colour: sRGB <-> linear light.

_SRGB_TO_LINEAR_LUT = None


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
  """Inverse sRGB transfer. uint8 input uses a 256-entry table (fast)."""
  global _SRGB_TO_LINEAR_LUT
  if x.dtype == np.uint8:
    if _SRGB_TO_LINEAR_LUT is None:
      _SRGB_TO_LINEAR_LUT = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)
    return _SRGB_TO_LINEAR_LUT[x]
  x = np.asarray(x, np.float32)
  return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


_LINEAR_TO_SRGB_LUT = None
_LUT_LEVELS = 1 << 16  # Linear step 1.5e-5: far below an 8-bit sRGB step anywhere.


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
  """sRGB transfer on float linear values (clipped to [0, 1]), float32.

  Looked up in a 65536-entry table: pow() on every pixel was the slowest step of
  synthesis.
  """
  global _LINEAR_TO_SRGB_LUT
  if _LINEAR_TO_SRGB_LUT is None:
    v = np.linspace(0.0, 1.0, _LUT_LEVELS, dtype=np.float64)
    _LINEAR_TO_SRGB_LUT = np.where(
      v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055
    ).astype(np.float32)
  index = np.clip(np.asarray(x, np.float32), 0.0, 1.0) * (_LUT_LEVELS - 1) + 0.5
  return _LINEAR_TO_SRGB_LUT[index.astype(np.int32)]


# ---------------------------------------------------------------------------
# Objects and crops.


def random_blob_alpha(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """A random soft-edged blob filling part of an h x w box, [h, w] float32.

  A smooth random field plus an elliptic bump, thresholded with a soft ramp.
  The alpha is exactly 0 on and near the box border, so the object's support
  (alpha > 0) is crisp and lies inside the box.
  """
  yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
  xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
  bump = 1.0 - (yy**2 + xx**2)  # <= 0 outside the inscribed ellipse.
  grid = rng.uniform(-1, 1, size=(5, 5)).astype(np.float32)
  noise = np.asarray(Image.fromarray(grid, mode='F').resize((w, h), Image.Resampling.BICUBIC))
  field = bump + 0.35 * np.clip(noise, -1, 1)
  threshold, soft = 0.4, rng.uniform(0.03, 0.25)
  t = np.clip((field - threshold) / soft, 0.0, 1.0)
  return (t * t * (3 - 2 * t)).astype(np.float32)  # Smoothstep edge.


HARD_SHAPES = ('polygon', 'ellipse', 'box')
# Kinds of object outline a BlurSettings may name.
SHAPES = ('blob',) + HARD_SHAPES


def hard_shape_alpha(
  rng: np.random.Generator, h: int, w: int, kind: str | None = None
) -> np.ndarray:
  """A hard-edged polygon, ellipse or rounded box (`kind`, random if None) in an
  h x w box, anti-aliased (4x supersampled), [h, w] float32, 0 on the box border."""
  s = 4
  canvas = Image.new('L', (w * s, h * s), 0)
  draw = ImageDraw.Draw(canvas)
  kind = kind or HARD_SHAPES[rng.integers(len(HARD_SHAPES))]
  cy, cx, ry, rx = h * s / 2, w * s / 2, (h * s / 2 - s) * 0.95, (w * s / 2 - s) * 0.95
  if kind == 'polygon':
    k = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.45, 1.0, k)
    draw.polygon(
      [(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radii)], fill=255
    )
  elif kind == 'ellipse':
    f = rng.uniform(0.6, 1.0, 2)
    draw.ellipse([cx - rx * f[0], cy - ry * f[1], cx + rx * f[0], cy + ry * f[1]], fill=255)
  elif kind == 'box':
    f = rng.uniform(0.5, 0.95, 2)
    draw.rounded_rectangle(
      [cx - rx * f[0], cy - ry * f[1], cx + rx * f[0], cy + ry * f[1]],
      radius=int(min(rx, ry) * rng.uniform(0.05, 0.4)),
      fill=255,
    )
  else:
    raise ValueError(f'kind must be one of {HARD_SHAPES}, got {kind!r}')
  return np.asarray(canvas.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0


def _random_crop(
  rng: np.random.Generator, photo: np.ndarray, h: int, w: int, max_zoom: float = 2.5
) -> np.ndarray:
  """A random h x w view of a photo: random zoom (down-scaling preferred), flip."""
  ph, pw = photo.shape[:2]
  top = min(max_zoom, ph / h, pw / w)
  zoom = rng.uniform(min(1.0, top), top)
  ch, cw = min(ph, max(1, round(h * zoom))), min(pw, max(1, round(w * zoom)))
  y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
  crop = photo[y : y + ch, x : x + cw]
  if (ch, cw) != (h, w):
    crop = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR))
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  return crop


# ---------------------------------------------------------------------------
# The triple.


def _overlap(canvas_hw, top_left, box_hw):
  """Slices (canvas, box) of where a box at `top_left` overlaps the canvas."""
  (h, w), (by, bx), (bh, bw) = canvas_hw, top_left, box_hw
  y0, y1, x0, x1 = max(0, by), min(h, by + bh), max(0, bx), min(w, bx + bw)
  if y0 >= y1 or x0 >= x1:
    return None
  return ((slice(y0, y1), slice(x0, x1)), (slice(y0 - by, y1 - by), slice(x0 - bx, x1 - bx)))


def add_moving_object(
  sharp: np.ndarray,
  blurred: np.ndarray,
  swept: np.ndarray,
  obj: np.ndarray,
  alpha: np.ndarray,
  kernel: np.ndarray,
  top_left: tuple[int, int],
) -> None:
  """Composites an object into a scene, in place, in linear light.

  Args:
    sharp, blurred: [H, W, 3] linear images: the object is drawn at its
      mid-exposure box `top_left` into `sharp`, and moved by `kernel` (centred
      at mid-exposure) into `blurred`, over what each already holds.
    swept: [H, W] bool, marked wherever the object passed during the exposure.
    obj: [h, w, 3] the object's colours; alpha: [h, w] its matte.
    kernel: [k, k] its motion kernel, k odd.
  """
  h, w = swept.shape
  oh, ow = alpha.shape
  y0, x0 = top_left
  r = kernel.shape[0] // 2
  support = (alpha > 0).astype(np.float32)
  stack = np.concatenate([alpha[..., None] * obj, alpha[..., None], support[..., None]], axis=2)
  moved, covered = full_convolve(
    stack, [kernel, (kernel > 0).astype(np.float32)], [slice(0, 4), slice(4, 5)]
  )
  region = _overlap((h, w), (y0, x0), (oh, ow))
  if region:  # sharp: the object at its mid-exposure box
    canvas, local = region
    a = alpha[local][..., None]
    sharp[canvas] = a * obj[local] + (1 - a) * sharp[canvas]
  region = _overlap((h, w), (y0 - r, x0 - r), moved.shape[:2])
  if region:  # blurred: the object's motion, a box grown by the kernel radius r
    canvas, local = region
    here = covered[local][..., 0] > 0.5
    k_alpha = np.clip(moved[local][..., 3:4], 0.0, 1.0)
    mixed = np.clip(moved[local][..., :3], 0.0, None) + (1 - k_alpha) * blurred[canvas]
    blurred[canvas] = np.where(here[..., None], mixed, blurred[canvas])
    swept[canvas] |= here


# ---------------------------------------------------------------------------
# Capture: linear light to 8-bit pixels.


@dataclasses.dataclass(frozen=True)
class Camera:
  """A camera's rendering instead of sRGB's curve: signal-dependent noise
  (Poisson-Gaussian, std sqrt(gain * x + read^2) in linear light, gain and
  read drawn in [0, max]), a display gamma, then JPEG. Ranges are inclusive."""

  gamma: tuple[float, float] = (1.8, 2.6)
  gain: float = 0.004
  read: float = 0.006
  jpeg_quality: tuple[int, int] = (75, 95)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
  """uint8 [H, W, 3] -> the same image saved and read back as JPEG."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=int(quality))
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))


def camera_capture(
  rng: np.random.Generator,
  blurred: np.ndarray,
  sharp: np.ndarray,
  swept: np.ndarray,
  camera: Camera,
) -> tuple[np.ndarray, np.ndarray]:
  """Linear [H, W, 3] blurred and sharp images -> uint8 (blur, sharp) as `camera`
  renders them. One noise field goes into both and outside `swept` [H, W] the
  blurred image takes the sharp one's JPEG, so there they stay bit-identical."""
  h, w = sharp.shape[:2]
  gain, read = rng.uniform(0.0, camera.gain), rng.uniform(0.0, camera.read)
  noise = rng.normal(0, 1, (h, w, 3)).astype(np.float32) * np.sqrt(gain * sharp + read**2)
  gamma = rng.uniform(*camera.gamma)
  pair = np.clip(np.stack([blurred, sharp]) + noise, 0.0, 1.0) ** (1 / gamma)
  pair = np.clip(np.round(pair * 255.0), 0, 255).astype(np.uint8)
  lo, hi = camera.jpeg_quality
  quality = int(rng.integers(lo, hi + 1))
  blur, sharp = jpeg_roundtrip(pair[0], quality), jpeg_roundtrip(pair[1], quality)
  return np.where(swept[..., None], blur, sharp), sharp


@dataclasses.dataclass(frozen=True)
class BlurSettings:
  """How triples look. Lengths are trajectory arc lengths in pixels.

  The defaults follow real local motion blur at 256-512 px: a walking person in
  a 2152x1436 ReLoBlur frame smears a few tens of pixels, a few to a dozen once
  the frame is scaled to a few hundred pixels. Objects are cut from the most
  textured of `texture_tries` random crops, so the blur is visible inside them,
  not only at their edges.
  """

  blur_length: tuple[float, float] = (2.0, 12.0)
  object_size: tuple[float, float] = (0.2, 0.6)  # Box side / min(H, W).
  num_objects: tuple[int, int] = (1, 2)  # Inclusive range.
  max_noise: float = 0.01  # Std of the shared sRGB noise, drawn in [0, max].
  kinds: tuple[str, ...] = TRAJECTORY_KINDS  # Of MOTION_KINDS, drawn uniformly.
  texture_tries: int = 4  # Object crops drawn; the most textured one is used.
  shapes: tuple[str, ...] = ('blob',)  # Of SHAPES, drawn uniformly.
  exposure: tuple[float, float] = (1.0, 1.0)  # Object brightness factor, linear light.
  camera: Camera | None = None  # None: sRGB's curve with `max_noise`; else this camera.

  def __post_init__(self):
    for name, values, accepted in (
      ('kinds', self.kinds, MOTION_KINDS),
      ('shapes', self.shapes, SHAPES),
    ):
      if not values or set(values) - set(accepted):
        raise ValueError(f'{name} must be a non-empty choice of {accepted}, got {values}')


# Named settings for data specs (`synthetic?preset=extreme`). `extreme` is the
# earlier default: objects sweeping 8-64 px, mostly occlusion rather than blur.
PRESETS = {
  'realistic': BlurSettings(),
  'extreme': BlurSettings(blur_length=(8.0, 64.0), texture_tries=1),
  # Habits made hard to learn: 1-3 objects of every outline and size, at
  # another exposure, moving along any path or shaking, rendered by a random
  # camera (gamma, signal-dependent noise, JPEG) instead of always sRGB.
  'varied': BlurSettings(
    object_size=(0.12, 0.6),
    num_objects=(1, 3),
    kinds=MOTION_KINDS,
    shapes=SHAPES,
    exposure=(0.5, 1.8),
    camera=Camera(gamma=(1.6, 2.8), gain=0.006, read=0.01, jpeg_quality=(60, 98)),
  ),
}


def texture_energy(image: np.ndarray) -> float:
  """Mean absolute finite difference of a [h, w, 3] image (its visible detail)."""
  x = np.asarray(image, np.float32)
  return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())


def synthesize(
  rng: np.random.Generator,
  photos: Sequence[np.ndarray],
  size: tuple[int, int],
  settings: BlurSettings = BlurSettings(),
) -> Example:
  """One local motion blur triple.

  Args:
    rng: the only source of randomness (same state -> same triple).
    photos: a pool of uint8 [h, w, 3] photographs (a `PhotoPool`).
    size: (H, W) of the triple.
    settings: blur, object and noise ranges.

  Returns:
    `blur`, `sharp` uint8 [H, W, 3] and `mask` uint8 [H, W, 1] in {0, 1}.
  """
  h, w = size
  n = len(photos)
  bg_index = int(rng.integers(n))
  background = srgb_to_linear(_random_crop(rng, photos[bg_index], h, w))
  sharp = background.copy()
  blurred = background.copy()
  swept = np.zeros((h, w), bool)

  lo, hi = settings.num_objects
  for _ in range(int(rng.integers(lo, hi + 1))):
    # The object comes from another photo than the background when possible.
    fg_index = int(rng.integers(n - 1)) if n > 1 else 0
    fg_index += int(n > 1 and fg_index >= bg_index)
    side = min(h, w)
    oh = max(4, round(side * rng.uniform(*settings.object_size)))
    ow = max(4, round(oh * rng.uniform(0.6, 1.6)))
    candidates = [
      _random_crop(rng, photos[fg_index], oh, ow) for _ in range(max(1, settings.texture_tries))
    ]
    obj = srgb_to_linear(max(candidates, key=texture_energy))
    if settings.exposure != (1.0, 1.0):
      obj = np.clip(obj * rng.uniform(*settings.exposure), 0.0, 1.0)
    # One outline needs no draw, so the default's random stream stays as it was.
    shapes = settings.shapes
    shape = shapes[rng.integers(len(shapes))] if len(shapes) > 1 else shapes[0]
    if shape == 'blob':
      alpha = random_blob_alpha(rng, oh, ow)
    else:
      alpha = hard_shape_alpha(rng, oh, ow, shape)
    # Mid-exposure box position; may hang over the border (motion brings it in).
    y0 = int(rng.integers(-oh // 3, h - 2 * oh // 3 + 1))
    x0 = int(rng.integers(-ow // 3, w - 2 * ow // 3 + 1))

    kind = settings.kinds[rng.integers(len(settings.kinds))]
    length = rng.uniform(*settings.blur_length)
    path = (
      shake_trajectory(rng, length) if kind == 'shake' else random_trajectory(rng, length, kind)
    )
    kernel = trajectory_kernel(path)
    add_moving_object(sharp, blurred, swept, obj, alpha, kernel, (y0, x0))

  # Outside the swept area both images are the background bit for bit.
  blurred = np.where(swept[..., None], blurred, sharp)
  mask = swept.astype(np.uint8)[..., None]
  if settings.camera is not None:
    blur, sharp = camera_capture(rng, blurred, sharp, swept, settings.camera)
    return {'blur': blur, 'sharp': sharp, 'mask': mask}
  pair = linear_to_srgb(np.stack([blurred, sharp]))
  if settings.max_noise > 0:
    sigma = rng.uniform(0, settings.max_noise)
    pair = pair + rng.normal(0, sigma, size=(h, w, 3)).astype(np.float32)
  pair = np.clip(np.round(pair * 255.0), 0, 255).astype(np.uint8)
  return {'blur': pair[0], 'sharp': pair[1], 'mask': mask}


class SyntheticSource(GeneratedSource):
  """`count` synthetic triples of a fixed size; example i depends only on (seed, split, i).

  Train, val and test use disjoint photos and disjoint random streams, so
  `SyntheticSource(split='test')` is a held-out set for a model trained on
  `SyntheticSource(split='train')`, whatever the seeds, and `split='val'` one to
  choose weights by.
  """

  min_size = 16

  def __init__(
    self,
    count: int = 100,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    split: str = 'train',
    photos: str | os.PathLike | None = None,
    settings: BlurSettings = BlurSettings(),
  ):
    if split not in _SPLIT_CODES:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    super().__init__(count, size, seed)
    self.split = split
    # A name of PHOTO_SETS, 'deadleaves', a folder (write a folder called like a
    # set as ./NAME), or several joined by ',' (`photo_pool`).
    self.photo_source = DEFAULT_PHOTO_SET if photos is None else str(photos)
    self.settings = settings

  def _photo_pool(self) -> PhotoPool:
    return photo_pool(self.photo_source, self.split)

  def _example(self, index: int) -> Example:
    rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
    example = synthesize(rng, self.photos, self.size, self.settings)
    example['name'] = f'synthetic_{self.split}_{self.seed}_{index:06d}'
    return example
