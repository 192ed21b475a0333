"""Image files and pixel values: every reader, writer and converter.

Values: `to_float` takes any image (uint8, uint16, wider integers by a
16-bit scale, float) to float32 in [0, 1]; `to_uint8` takes any image to
uint8 as the official code saves it (clamp, x 255, round); `quantize` gives
the float values a uint8 file would hold.

Files: `load_rgb` / `load_mask` read dataset images as uint8 (the data
readers); `read_image` reads a photo to deblur as it is (grey or colour,
8 or 16 bits, alpha kept aside) and `encode_result` writes the result in the
same layout; `encode_png` (8 bits, grey or RGB) and `encode_png16` (any
channel count) make PNG bytes, `save_png` writes a Pillow image atomically.
Pillow decodes 16-bit colour PNG and TIFF to 8 bits, so those go through
libspng (pyspng) and tifffile.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
import struct
import zlib

from absl import logging
import numpy as np
from PIL import Image, ImageOps

from lmdvit_jax.errors import DataError
from lmdvit_jax.files import write_bytes_atomic

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# PNG colour type by channel count: grey, grey + alpha, RGB, RGBA.
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def open_image(path: str | os.PathLike) -> Image.Image:
  try:
    image = Image.open(path)
    image.load()
  except FileNotFoundError:
    raise
  except Exception as e:  # PIL raises several types for broken files.
    raise DataError(f'Cannot read image {path}: {e}') from e
  return image


# ----------------------------------------------------------------------------
# Values.


def to_float(image: np.ndarray) -> np.ndarray:
  """Any image -> float32 in [0, 1]: uint8 / 255, uint16 / 65535, wider
  integers by the 16-bit scale (clipped), floats as they are.

  Raises:
    ValueError: float values that are NaN or infinite.
  """
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  if image.dtype == bool:
    return image.astype(np.float32)
  if np.issubdtype(image.dtype, np.integer):
    return np.clip(image.astype(np.float32) / 65535.0, 0.0, 1.0)
  if not np.issubdtype(image.dtype, np.floating):
    raise TypeError(f'expected an integer or float image, got {image.dtype}')
  if not np.isfinite(image).all():
    # NaN would spread through every window's attention and LayerNorm, and a
    # pruned-everything decision map would hide where it came from.
    bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
    raise ValueError(f'image holds {bad} non-finite value(s) (NaN or inf); replace them first')
  return image.astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Any image -> uint8: floats as the official code saves them (clamp,
  x 255, round), 16-bit integers (or any holding values above 255) / 257,
  bool x 255."""
  a = np.asarray(image)
  if a.dtype == np.uint8:
    return a
  if a.dtype == bool:
    return a.astype(np.uint8) * 255
  if np.issubdtype(a.dtype, np.floating):
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
  if a.dtype == np.uint16 or a.max(initial=0) > 255:
    return np.round(a.astype(np.float32) / 257.0).clip(0, 255).astype(np.uint8)
  return a.clip(0, 255).astype(np.uint8)


def quantize(image: np.ndarray) -> np.ndarray:
  """float image -> the float32 values its uint8 file would hold (k / 255)."""
  return to_uint8(image).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------
# Dataset images (uint8).


def load_rgb(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as uint8 RGB [H, W, 3] (grey replicated, alpha dropped)."""
  image = open_image(path)
  if image.mode in ('RGB', 'L', 'I;16', 'I;16B', 'I;16L', 'I', 'F', '1'):
    a = to_uint8(np.asarray(image))
  else:  # Palette, RGBA, CMYK, LA, ...
    a = np.asarray(image.convert('RGB'))
  if a.ndim == 2:
    a = np.repeat(a[:, :, None], 3, axis=2)
  if a.ndim != 3 or a.shape[2] != 3:
    raise DataError(f'{path}: expected an RGB or grey image, got shape {a.shape}.')
  return np.ascontiguousarray(a)


def binarize_mask(mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
  """Any mask array -> uint8 [H, W, 1] in {0, 1}.

  Values are first scaled to [0, 1] (by 255 for 8-bit data whose maximum is above
  1, so both 0/1 and 0/255 masks work), then compared with `threshold`; this
  cleans grey anti-aliased edges and JPEG noise. Colour masks use their mean.
  """
  m = np.asarray(mask)
  if m.ndim == 3:
    m = m[..., :3].mean(axis=2) if m.shape[2] > 1 else m[..., 0]
  if m.ndim != 2:
    raise DataError(f'A mask must be [H, W] or [H, W, C], got shape {np.shape(mask)}.')
  m = m.astype(np.float32)
  top = float(m.max(initial=0.0))
  if top > 1.0:
    m = m / (65535.0 if top > 255.0 else 255.0)
  return (m > threshold).astype(np.uint8)[:, :, None]


def load_mask(path: str | os.PathLike, threshold: float = 0.5) -> np.ndarray:
  """Reads a mask image as uint8 [H, W, 1] in {0, 1} (see `binarize_mask`)."""
  image = open_image(path)
  if image.mode == 'P':
    image = image.convert('L')
  return binarize_mask(np.asarray(image), threshold)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
  """(height, width) from the file header, without decoding the pixels."""
  try:
    with Image.open(path) as image:
      w, h = image.size
  except FileNotFoundError:
    raise
  except Exception as e:
    raise DataError(f'Cannot read image {path}: {e}') from e
  return h, w


def encode_png(a: np.ndarray, compress_level: int = 1) -> bytes:
  """uint8 [H, W, C] (C in 1, 3) -> PNG bytes. Level 1: fast, files ~10% larger."""
  a = np.asarray(a)
  if a.dtype != np.uint8:
    raise ValueError(f'encode_png needs uint8, got {a.dtype}')
  if a.ndim == 3 and a.shape[2] == 1:
    a = a[:, :, 0]
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format='PNG', compress_level=compress_level)
  return buf.getvalue()


def list_images(folder: str | os.PathLike, recursive: bool = True) -> dict[str, Path]:
  """Image files under `folder`, keyed by relative path without suffix.

  Raises:
    FileNotFoundError: `folder` does not exist.
    DataError: two files differ only by suffix (a.png and a.jpg).
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f'No such folder: {folder}')
  files = folder.rglob('*') if recursive else folder.iterdir()
  out: dict[str, Path] = {}
  for f in sorted(files):
    if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
      key = f.relative_to(folder).with_suffix('').as_posix()
      if key in out:
        raise DataError(f'Two images with the same name in {folder}: {out[key].name}, {f.name}')
      out[key] = f
  return out


def save_png(path: str | os.PathLike, image: Image.Image, **options) -> None:
  """Encodes a Pillow `image` as PNG in memory, then writes it atomically."""
  buf = io.BytesIO()
  image.save(buf, format='PNG', **options)
  write_bytes_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------
# Photos to deblur, any layout, and their results in the same layout.


@dataclasses.dataclass
class LoadedImage:
  """An input image split into what the model sees and what is put back.

  Attributes:
    rgb: [H, W, 3] float32 in [0, 1] (grey replicated).
    alpha: None or [H, W] float32 in [0, 1], restored unchanged.
    grey: the file is grey (the output is written grey).
    bits: 8 or 16, bit depth of the output.
  """

  rgb: np.ndarray
  alpha: np.ndarray | None
  grey: bool
  bits: int


def png_header(path: str | os.PathLike) -> tuple[int, int] | None:
  """(bit depth, colour type) from a PNG header (IHDR), None for other files."""
  with open(path, 'rb') as f:
    head = f.read(26)
  if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b'IHDR':
    return None
  return head[24], head[25]


def _read_16bit_colour(path: str | os.PathLike) -> LoadedImage | None:
  """A 16-bit RGB or RGBA PNG or TIFF at full depth (Pillow decodes them to 8
  bits), read with libspng or tifffile; None for any other file."""
  header = png_header(path)
  try:
    if header is not None:
      if header[0] != 16 or header[1] not in (2, 6):  # RGB, RGBA
        return None
      try:
        import pyspng
      except ImportError:
        logging.warning(
          '%s: a 16-bit colour PNG, read as 8 bits (pip install pyspng keeps all 16)', path
        )
        return None
      a = pyspng.load(Path(path).read_bytes())
    elif Path(path).suffix.lower() in ('.tif', '.tiff'):
      import tifffile

      with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if (
          page.dtype != np.uint16
          or getattr(page, 'samplesperpixel', 1) not in (3, 4)
          or len(tif.pages) > 1
        ):
          return None
        a = page.asarray()
    else:
      return None
  except Exception as e:  # libspng and tifffile raise many kinds
    raise DataError(f'Cannot read image {path}: {e}') from e
  if a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] not in (3, 4):
    return None
  # libspng decodes 16-bit RGB as RGBA (opaque): only colour type 6 has alpha.
  has_alpha = header[1] == 6 if header is not None else a.shape[2] == 4
  alpha = to_float(a[..., 3]) if has_alpha else None
  return LoadedImage(to_float(a[..., :3]), alpha, False, 16)


def read_image(path: str | os.PathLike) -> LoadedImage:
  """Reads any image Pillow opens into a `LoadedImage`.

  Raises:
    DataError: the file is not a readable image (names the file).
    FileNotFoundError: it does not exist.
  """
  if not Path(path).is_file():
    raise FileNotFoundError(f'{path}: no such file')
  if (loaded := _read_16bit_colour(path)) is not None:
    return loaded
  header = png_header(path)
  sixteen = header is not None and header[0] == 16
  image = open_image(path)
  frames = getattr(image, 'n_frames', 1)
  if frames > 1:
    raise DataError(
      f'{path}: has {frames} frames (an animation or a multi-page file); '
      'deblur takes single images: extract the frames first'
    )
  image = ImageOps.exif_transpose(image)
  mode = image.mode
  if mode.startswith('I') or mode == 'F':  # 16-bit (or wider) grey.
    if mode == 'F':
      grey = np.asarray(image, np.float32)
      if not np.isfinite(grey).all():
        raise DataError(f'{path}: holds NaN or infinite values')
      low, high = float(grey.min(initial=0.0)), float(grey.max(initial=0.0))
      if low < 0 or high > 1:
        logging.warning(
          '%s: float values from %.4g to %.4g, clipped to [0, 1] (the model '
          'takes [0, 1]; scale the file to keep them)',
          path,
          low,
          high,
        )
      grey = np.clip(grey, 0.0, 1.0)
    else:
      grey = to_float(np.asarray(image).astype(np.int64))
    return LoadedImage(np.repeat(grey[..., None], 3, axis=2), None, True, 16)
  if mode == 'P':
    mode = 'RGBA' if 'transparency' in image.info else 'RGB'
    image = image.convert(mode)
  elif mode == 'PA':
    mode, image = 'RGBA', image.convert('RGBA')
  elif mode in ('1', 'La'):
    mode = 'L' if mode == '1' else 'LA'
    image = image.convert(mode)
  elif mode not in ('L', 'LA', 'RGB', 'RGBA'):  # CMYK, YCbCr, RGBa, ...
    mode = 'RGBA' if 'A' in mode or 'a' in mode else 'RGB'
    image = image.convert(mode)
  a = np.asarray(image)
  if a.ndim == 2:
    a = a[..., None]
  is_grey = mode in ('L', 'LA')
  colour = np.repeat(a[..., :1], 3, axis=2) if is_grey else a[..., :3]
  alpha = to_float(a[..., -1]) if mode in ('LA', 'RGBA') else None
  return LoadedImage(to_float(colour), alpha, is_grey, 16 if sixteen else 8)


def encode_png16(a: np.ndarray, compress_level: int = 6) -> bytes:
  """uint16 [H, W, C] (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) -> 16-bit PNG bytes.

  Pillow writes 16 bits for grey only, so the few chunks are assembled here.
  Every row uses filter type 0 (none).
  """
  a = np.asarray(a)
  if a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] not in _PNG_COLOUR_TYPE:
    raise ValueError(f'expected uint16 [H, W, 1..4], got {a.dtype} {a.shape}')
  h, w, c = a.shape

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (
      struct.pack('>I', len(data))
      + kind
      + data
      + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
    )

  rows = a.astype('>u2').reshape(h, w * c).view(np.uint8)
  raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
  header = struct.pack('>IIBBBBB', w, h, 16, _PNG_COLOUR_TYPE[c], 0, 0, 0)
  return (
    PNG_SIGNATURE
    + chunk(b'IHDR', header)
    + chunk(b'IDAT', zlib.compress(raw, compress_level))
    + chunk(b'IEND', b'')
  )


def encode_result(restored: np.ndarray, like: LoadedImage) -> bytes:
  """PNG bytes of `restored` [H, W, 3] in the layout of the input `like`."""
  channels = restored.mean(axis=2, keepdims=True) if like.grey else restored
  if like.alpha is not None:
    channels = np.concatenate([channels, like.alpha[..., None]], axis=2)
  if like.bits == 16:
    return encode_png16(np.round(np.clip(channels, 0, 1) * 65535.0).astype(np.uint16))
  a = to_uint8(channels)
  image = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
  buf = io.BytesIO()
  image.save(buf, format='PNG', compress_level=6)
  return buf.getvalue()
