"""Reading and writing the image files of deblurring datasets (PIL + numpy)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from lmdvit_jax.data.examples import DataError

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


def _to_uint8(a: np.ndarray) -> np.ndarray:
  if a.dtype == np.uint8:
    return a
  if a.dtype == bool:
    return a.astype(np.uint8) * 255
  if a.dtype == np.uint16 or (np.issubdtype(a.dtype, np.integer) and a.max(initial=0) > 255):
    return np.round(a.astype(np.float32) / 257.0).clip(0, 255).astype(np.uint8)
  if np.issubdtype(a.dtype, np.floating):
    return np.round(np.clip(a, 0, 1) * 255.0).astype(np.uint8)
  return a.clip(0, 255).astype(np.uint8)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as uint8 RGB [H, W, 3] (grey replicated, alpha dropped)."""
  image = open_image(path)
  if image.mode in ('RGB', 'L', 'I;16', 'I;16B', 'I;16L', 'I', 'F', '1'):
    a = _to_uint8(np.asarray(image))
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
