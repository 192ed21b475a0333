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

Sources of sharp photographs: a named set of the RGB and grey photographs
shipped inside PyPI packages (`PHOTO_SETS`: scikit-image's, the default, or
those and more from scikit-learn, matplotlib, mahotas and PyWavelets; read as
files from the installed packages, never downloaded), or a folder of the user's
own photographs. Both split into disjoint train, val and test photos so
neither a validation set (for choosing weights) nor a held-out test set shows a
training photo.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import fft as sp_fft

from lmdvit_jax.data import dead_leaves, image_files
from lmdvit_jax.data.examples import DataError, Example, Source

# Sharp photographs shipped as files inside PyPI packages (read from the
# installed package, found without importing it; never downloaded):
# name -> (package, path inside it). Photos of the same scene (the two
# motorcycle views) stay in the same split.
PACKAGE_PHOTOS = {
    'astronaut': ('skimage', 'data/astronaut.png'),
    'coffee': ('skimage', 'data/coffee.png'),
    'rocket': ('skimage', 'data/rocket.jpg'),
    'motorcycle_left': ('skimage', 'data/motorcycle_left.png'),
    'motorcycle_right': ('skimage', 'data/motorcycle_right.png'),
    'hubble_deep_field': ('skimage', 'data/hubble_deep_field.jpg'),
    'immunohistochemistry': ('skimage', 'data/ihc.png'),
    'camera': ('skimage', 'data/camera.png'),
    'brick': ('skimage', 'data/brick.png'),
    'grass': ('skimage', 'data/grass.png'),
    'moon': ('skimage', 'data/moon.png'),
    'chelsea': ('skimage', 'data/chelsea.png'),
    'coins': ('skimage', 'data/coins.png'),
    'gravel': ('skimage', 'data/gravel.png'),
    'china': ('sklearn', 'datasets/images/china.jpg'),
    'flower': ('sklearn', 'datasets/images/flower.jpg'),
    'grace_hopper': ('matplotlib', 'mpl-data/sample_data/grace_hopper.jpg'),
    'department_store': ('mahotas', 'demos/data/DepartmentStore.jpg'),
    'luispedro': ('mahotas', 'demos/data/luispedro.jpg'),
    'aero': ('pywt', 'data/aero.npz'),
    'ascent': ('pywt', 'data/ascent.npz'),
}
# PyPI distribution of each package, for the error that names what to install.
_DISTRIBUTIONS = {'skimage': 'scikit-image', 'sklearn': 'scikit-learn',
                  'matplotlib': 'matplotlib', 'mahotas': 'mahotas', 'pywt': 'PyWavelets'}
TEST_PHOTOS = ('chelsea', 'coins', 'gravel')
# Validation photos: in no set's training split, so that weights are chosen on
# photos the model never saw (and never on the test photos). The same for every set.
VAL_PHOTOS = ('flower', 'department_store', 'ascent')
# Named photo sets of the `photos` option, train and test photos: 'skimage'
# (scikit-image's 14 photos) and 'packages' (those and 4 more from other
# packages; the same test photos).
PHOTO_SETS = {
    'skimage': tuple(n for n, (package, _) in PACKAGE_PHOTOS.items() if package == 'skimage'),
    'packages': tuple(n for n in PACKAGE_PHOTOS if n not in VAL_PHOTOS),
}
DEFAULT_PHOTO_SET = 'skimage'

_SPLIT_CODES = {'train': 0, 'test': 1, 'val': 2}
SPLITS = tuple(_SPLIT_CODES)

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
        v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055).astype(np.float32)
  index = np.clip(np.asarray(x, np.float32), 0.0, 1.0) * (_LUT_LEVELS - 1) + 0.5
  return _LINEAR_TO_SRGB_LUT[index.astype(np.int32)]


# ---------------------------------------------------------------------------
# Photographs.


def _package_file(package: str, path: str) -> Path:
  spec = importlib.util.find_spec(package)  # Locates the package without running it.
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f'The photo {path} ships with the Python package {package!r}, which is '
                    f'not installed: pip install {_DISTRIBUTIONS.get(package, package)} (or the '
                    "project's extra: pip install -e '.[photos]')")
  return Path(list(spec.submodule_search_locations)[0]) / path


@functools.lru_cache(maxsize=None)
def _package_photo(name: str) -> np.ndarray:
  """A photo of `PACKAGE_PHOTOS` as uint8 `[H, W, 3]` (grey replicated)."""
  file = _package_file(*PACKAGE_PHOTOS[name])
  if file.suffix != '.npz':
    return image_files.load_rgb(file)
  with np.load(file) as arrays:  # PyWavelets keeps its photos as one grey array.
    grey = np.asarray(arrays[arrays.files[0]]).clip(0, 255).astype(np.uint8)
  return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


class PhotoPool(Sequence):
  """Named sharp photographs, uint8 [H, W, 3], decoded on first use and cached."""

  def __init__(self, names: Sequence[str], loader, description: str):
    if not names:
      raise DataError(f'No photographs in {description}.')
    self.names = tuple(names)
    self._loader = loader
    self.description = description

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index: int) -> np.ndarray:
    return self._loader(self.names[index])

  def __repr__(self) -> str:
    return f'PhotoPool({self.description}: {len(self)} photos)'


def package_photos(split: str = 'train', photo_set: str = DEFAULT_PHOTO_SET) -> PhotoPool:
  """A named set of `PHOTO_SETS`, split into `train`, `val` (`VAL_PHOTOS`), `test`
  (`TEST_PHOTOS`) or `all` (train and test)."""
  if photo_set not in PHOTO_SETS:
    raise ValueError(f'Unknown photo set {photo_set!r}; accepted: {sorted(PHOTO_SETS)}')
  every = PHOTO_SETS[photo_set]
  names = {'train': tuple(n for n in every if n not in TEST_PHOTOS),
           'val': VAL_PHOTOS, 'test': TEST_PHOTOS, 'all': every}
  if split not in names:
    raise ValueError(f'split must be train, val, test or all, got {split!r}')
  return PhotoPool(names[split], _package_photo, f'{split} photos of the {photo_set!r} set')


@functools.lru_cache(maxsize=64)
def photo_pool(source: str, split: str) -> PhotoPool:
  """The split's pictures of a photo source: a name of PHOTO_SETS, `deadleaves`
  (procedural images, `dead_leaves`), a FOLDER, or several of these joined by
  ',' (e.g. `packages,deadleaves`)."""
  parts = source.split(',') if ',' in source and not Path(source).is_dir() else [source]
  pools = []
  for part in parts:
    if part in PHOTO_SETS:
      pools.append(package_photos(split, part))
    elif part == 'deadleaves':
      pools.append(PhotoPool(dead_leaves.names(split), dead_leaves.load,
                             f'dead-leaves images ({split})'))
    else:
      pools.append(folder_photos(part, split))
  if len(pools) == 1:
    return pools[0]
  names = [(i, name) for i, pool in enumerate(pools) for name in pool.names]
  return PhotoPool([f'{i}:{name}' for i, name in names],
                   lambda key: pools[int(key.split(':', 1)[0])]._loader(key.split(':', 1)[1]),  # pylint: disable=protected-access
                   ' + '.join(p.description for p in pools))


def _folder_photo(path: str) -> np.ndarray:
  return image_files.load_rgb(path)


def folder_photos(folder: str | os.PathLike, split: str = 'train',
                  test_fraction: float = 0.2, val_fraction: float = 0.1) -> PhotoPool:
  """Sharp photographs from a folder (recursive), split by a hash of their names.

  A photo's split depends only on its relative path, so adding photos never
  moves existing ones between splits. With at least two photos train and test
  get at least one each; val gets the photos whose hash falls in the next
  `val_fraction` after test's, never the last training photo (a folder too
  small for one is an error when val is asked for).
  """
  files = image_files.list_images(folder)
  if not files:
    raise DataError(f'No image files ({", ".join(image_files.IMAGE_SUFFIXES)}) in {folder}.')
  keys = sorted(files)
  score = {k: zlib.crc32(k.encode()) / 2**32 for k in keys}
  test = {k for k in keys if score[k] < test_fraction}
  if len(keys) >= 2 and not test:
    test = {min(keys, key=score.get)}
  if len(keys) >= 2 and len(test) == len(keys):
    test.discard(max(keys, key=score.get))
  val = {k for k in keys if k not in test and score[k] < test_fraction + val_fraction}
  if val and len(test) + len(val) == len(keys):
    val.discard(max(val, key=score.get))
  chosen = {'train': [k for k in keys if k not in test and k not in val],
            'val': [k for k in keys if k in val],
            'test': [k for k in keys if k in test], 'all': keys}
  if split not in chosen:
    raise ValueError(f'split must be train, val, test or all, got {split!r}')
  if not chosen[split]:
    raise DataError(f'{folder} has no {split} photos ({len(keys)} photos in all; a photo '
                    f'goes to {split} by a hash of its path, so add more photos).')
  paths = {k: str(files[k]) for k in keys}
  return PhotoPool(chosen[split], lambda k: _folder_photo(paths[k]),
                   f'{split} photos of {folder}')


# ---------------------------------------------------------------------------
# Motion: trajectories and kernels.

TRAJECTORY_KINDS = ('linear', 'random_walk', 'curved')  # `random_trajectory`'s.
# Kinds a BlurSettings may name: 'shake' is `shake_trajectory` (uneven speed).
MOTION_KINDS = TRAJECTORY_KINDS + ('shake',)


def random_trajectory(rng: np.random.Generator, length: float,
                      kind: str | None = None) -> np.ndarray:
  """Object positions during the exposure, [N, 2] (dy, dx) in pixels.

  Constant speed along a path of arc length `length`; samples are at most 1/4 px
  apart and the middle sample (mid-exposure) is at the origin.
  """
  kind = kind or TRAJECTORY_KINDS[rng.integers(len(TRAJECTORY_KINDS))]
  n = int(np.ceil(4 * length)) | 1  # Odd, so there is a middle sample.
  theta0 = rng.uniform(0, 2 * np.pi)
  if kind == 'linear':
    headings = np.full(n - 1, theta0)
  elif kind == 'curved':
    turn = rng.uniform(np.pi / 6, np.pi) * rng.choice([-1, 1])
    headings = theta0 + turn * np.linspace(-0.5, 0.5, n - 1)
  elif kind == 'random_walk':
    # Heading changes smoothly: integrated noise, so the path wiggles, not jitters.
    knots = rng.normal(0, 1.2, size=8).cumsum()
    headings = theta0 + np.interp(np.linspace(0, 7, n - 1), np.arange(8), knots - knots.mean())
  else:
    raise ValueError(f'kind must be one of {TRAJECTORY_KINDS}, got {kind!r}')
  step = length / (n - 1)
  steps = step * np.stack([np.sin(headings), np.cos(headings)], axis=1)
  path = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
  return path - path[n // 2]


def shake_trajectory(rng: np.random.Generator, length: float) -> np.ndarray:
  """Camera-shake-like positions [N, 2] (dy, dx) at equal times: the velocity
  random-walks with inertia, so the kernel is heavier where the path slowed
  down; scaled to arc length `length`, mid-exposure at the origin."""
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


def trajectory_kernel(points: np.ndarray) -> np.ndarray:
  """Splats a trajectory (bilinear) into a normalised kernel, [k, k] float32.

  `k` is odd and the kernel centre is the trajectory origin (mid-exposure), so
  convolving the object with it keeps the object's mid-exposure position.
  """
  r = int(np.ceil(np.abs(points).max(initial=0.0))) + 1
  k = 2 * r + 1
  p = points + r
  y0, x0 = np.floor(p[:, 0]).astype(int), np.floor(p[:, 1]).astype(int)
  fy, fx = p[:, 0] - y0, p[:, 1] - x0
  kernel = np.zeros(k * k, np.float64)
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      np.add.at(kernel, (y0 + dy) * k + (x0 + dx), wy * wx)
  kernel = kernel.reshape(k, k)
  kernel[kernel < 1e-6 * kernel.max()] = 0.0  # Drop splat crumbs: a crisp support.
  return (kernel / kernel.sum()).astype(np.float32)


def _full_convolve(x: np.ndarray, kernels: Sequence[np.ndarray],
                   channels: Sequence[slice]) -> list[np.ndarray]:
  """'Full' 2-D convolutions of channel groups of x [h, w, c] by FFT."""
  h, w = x.shape[:2]
  k = kernels[0].shape[0]
  shape = (sp_fft.next_fast_len(h + k - 1, real=True),
           sp_fft.next_fast_len(w + k - 1, real=True))
  fx = sp_fft.rfft2(x, s=shape, axes=(0, 1))
  out = []
  for kernel, sl in zip(kernels, channels):
    fk = sp_fft.rfft2(kernel, s=shape)[:, :, None]
    y = sp_fft.irfft2(fx[:, :, sl] * fk, s=shape, axes=(0, 1))
    out.append(y[:h + k - 1, :w + k - 1])
  return out


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
  noise = np.asarray(Image.fromarray(grid, mode='F').resize((w, h), Image.BICUBIC))
  field = bump + 0.35 * np.clip(noise, -1, 1)
  threshold, soft = 0.4, rng.uniform(0.03, 0.25)
  t = np.clip((field - threshold) / soft, 0.0, 1.0)
  return (t * t * (3 - 2 * t)).astype(np.float32)  # Smoothstep edge.


HARD_SHAPES = ('polygon', 'ellipse', 'box')
# Kinds of object outline a BlurSettings may name.
SHAPES = ('blob',) + HARD_SHAPES


def hard_shape_alpha(rng: np.random.Generator, h: int, w: int,
                     kind: str | None = None) -> np.ndarray:
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
    draw.polygon([(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a))
                  for a, r in zip(angles, radii)], fill=255)
  elif kind == 'ellipse':
    f = rng.uniform(0.6, 1.0, 2)
    draw.ellipse([cx - rx * f[0], cy - ry * f[1], cx + rx * f[0], cy + ry * f[1]], fill=255)
  elif kind == 'box':
    f = rng.uniform(0.5, 0.95, 2)
    draw.rounded_rectangle([cx - rx * f[0], cy - ry * f[1], cx + rx * f[0], cy + ry * f[1]],
                           radius=int(min(rx, ry) * rng.uniform(0.05, 0.4)), fill=255)
  else:
    raise ValueError(f'kind must be one of {HARD_SHAPES}, got {kind!r}')
  return np.asarray(canvas.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0


def _random_crop(rng: np.random.Generator, photo: np.ndarray, h: int, w: int,
                 max_zoom: float = 2.5) -> np.ndarray:
  """A random h x w view of a photo: random zoom (down-scaling preferred), flip."""
  ph, pw = photo.shape[:2]
  top = min(max_zoom, ph / h, pw / w)
  zoom = rng.uniform(min(1.0, top), top)
  ch, cw = min(ph, max(1, round(h * zoom))), min(pw, max(1, round(w * zoom)))
  y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
  crop = photo[y:y + ch, x:x + cw]
  if (ch, cw) != (h, w):
    crop = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))
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
  return ((slice(y0, y1), slice(x0, x1)),
          (slice(y0 - by, y1 - by), slice(x0 - bx, x1 - bx)))


def add_moving_object(sharp: np.ndarray, blurred: np.ndarray, swept: np.ndarray,
                      obj: np.ndarray, alpha: np.ndarray, kernel: np.ndarray,
                      top_left: tuple[int, int]) -> None:
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
  moved, covered = _full_convolve(
      stack, [kernel, (kernel > 0).astype(np.float32)], [slice(0, 4), slice(4, 5)])
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


def camera_capture(rng: np.random.Generator, blurred: np.ndarray, sharp: np.ndarray,
                   swept: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
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
    for name, values, accepted in (('kinds', self.kinds, MOTION_KINDS),
                                   ('shapes', self.shapes, SHAPES)):
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
    'varied': BlurSettings(object_size=(0.12, 0.6), num_objects=(1, 3), kinds=MOTION_KINDS,
                           shapes=SHAPES, exposure=(0.5, 1.8),
                           camera=Camera(gamma=(1.6, 2.8), gain=0.006, read=0.01,
                                         jpeg_quality=(60, 98))),
}


def texture_energy(image: np.ndarray) -> float:
  """Mean absolute finite difference of a [h, w, 3] image (its visible detail)."""
  x = np.asarray(image, np.float32)
  return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())


def synthesize(rng: np.random.Generator, photos: Sequence[np.ndarray],
               size: tuple[int, int],
               settings: BlurSettings = BlurSettings()) -> Example:
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
    candidates = [_random_crop(rng, photos[fg_index], oh, ow)
                  for _ in range(max(1, settings.texture_tries))]
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
    path = shake_trajectory(rng, length) if kind == 'shake' else random_trajectory(rng, length, kind)
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


class SyntheticSource(Source):
  """`count` synthetic triples of a fixed size; example i depends only on (seed, split, i).

  Train, val and test use disjoint photos and disjoint random streams, so
  `SyntheticSource(split='test')` is a held-out set for a model trained on
  `SyntheticSource(split='train')`, whatever the seeds, and `split='val'` one to
  choose weights by.
  """

  def __init__(self, count: int = 100, size: int | tuple[int, int] = 256, seed: int = 0,
               split: str = 'train', photos: str | os.PathLike | None = None,
               settings: BlurSettings = BlurSettings()):
    if split not in _SPLIT_CODES:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if count < 1:
      raise ValueError(f'count must be positive, got {count}')
    self.count = int(count)
    self.size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if min(self.size) < 16:
      raise ValueError(f'size must be at least 16 pixels, got {self.size}')
    self.seed = int(seed)
    self.split = split
    # A name of PHOTO_SETS, 'deadleaves', a folder (write a folder called like a
    # set as ./NAME), or several joined by ',' (`photo_pool`).
    self.photo_source = DEFAULT_PHOTO_SET if photos is None else str(photos)
    self.settings = settings

  @functools.cached_property
  def photos(self) -> PhotoPool:
    return photo_pool(self.photo_source, self.split)

  def __len__(self) -> int:
    return self.count

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop('photos', None)  # Rebuilt lazily in each worker.
    return state

  def _example(self, index: int) -> Example:
    rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
    example = synthesize(rng, self.photos, self.size, self.settings)
    example['name'] = f'synthetic_{self.split}_{self.seed}_{index:06d}'
    return example
