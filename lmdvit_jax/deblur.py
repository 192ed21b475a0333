r"""Deblurs image files of any size with an LMD-ViT checkpoint.

  python -m lmdvit_jax.deblur --checkpoint ckpt/lmdvit photo.jpg shots/ --output out/

INPUT arguments are image files or folders (searched recursively). Results are
PNG files under --output: a folder argument's images keep their path relative to
it, a file argument is written under its own name, with the suffix .png.
--overlays also writes NAME.decisions.png: the windows each pruning stage kept.

Formats: RGB and grey, 8 and 16 bit (16-bit input gives 16-bit output: grey
PNG and TIFF through Pillow; RGB and RGBA PNG through libspng and TIFF
through tifffile, as Pillow decodes those to 8 bits), float grey TIFF
(values outside [0, 1] are clipped, with a warning), alpha (kept aside and
put back unchanged), palette (written as RGB or RGBA). JPEG orientation tags
are applied. A file that cannot be read is reported on stderr with its name; the
other files are still processed and the exit status is 1. Every output is
written to a temporary file and renamed, never left half-written.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags, logging
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from lmdvit_jax import checkpointing, cli, compilation_cache, files, panels
from lmdvit_jax.errors import DataError, OutOfMemoryError
from lmdvit_jax.data import image_files
from lmdvit_jax.inference import Deblurrer, checkpoint_overrides, to_uint8

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# PNG colour type by channel count: grey, grey + alpha, RGB, RGBA.
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


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
        import pyspng  # pylint: disable=g-import-not-at-top
      except ImportError:
        logging.warning('%s: a 16-bit colour PNG, read as 8 bits (pip install pyspng keeps '
                        'all 16)', path)
        return None
      a = pyspng.load(Path(path).read_bytes())
    elif Path(path).suffix.lower() in ('.tif', '.tiff'):
      import tifffile  # pylint: disable=g-import-not-at-top
      with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if page.dtype != np.uint16 or page.samplesperpixel not in (3, 4) or len(tif.pages) > 1:
          return None
        a = page.asarray()
    else:
      return None
  except Exception as e:  # pylint: disable=broad-except  # libspng and tifffile raise many kinds
    raise DataError(f'Cannot read image {path}: {e}') from e
  if a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] not in (3, 4):
    return None
  # libspng decodes 16-bit RGB as RGBA (opaque): only colour type 6 has alpha.
  has_alpha = header[1] == 6 if header is not None else a.shape[2] == 4
  alpha = _scaled(a[..., 3]) if has_alpha else None
  return LoadedImage(_scaled(a[..., :3]), alpha, False, 16)


def _scaled(a: np.ndarray) -> np.ndarray:
  """Integer array -> float32 in [0, 1] by its type's full scale (16 bits for int32)."""
  a = np.asarray(a)
  if a.dtype == np.uint8:
    return a.astype(np.float32) / 255.0
  return np.clip(a.astype(np.float32) / 65535.0, 0.0, 1.0)


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
  image = image_files.open_image(path)
  frames = getattr(image, 'n_frames', 1)
  if frames > 1:
    raise DataError(f'{path}: has {frames} frames (an animation or a multi-page file); '
                    'deblur takes single images: extract the frames first')
  image = ImageOps.exif_transpose(image)
  mode = image.mode
  if mode.startswith('I') or mode == 'F':  # 16-bit (or wider) grey.
    if mode == 'F':
      grey = np.asarray(image, np.float32)
      if not np.isfinite(grey).all():
        raise DataError(f'{path}: holds NaN or infinite values')
      low, high = float(grey.min(initial=0.0)), float(grey.max(initial=0.0))
      if low < 0 or high > 1:
        logging.warning('%s: float values from %.4g to %.4g, clipped to [0, 1] (the model '
                        'takes [0, 1]; scale the file to keep them)', path, low, high)
      grey = np.clip(grey, 0.0, 1.0)
    else:
      grey = _scaled(np.asarray(image).astype(np.int64))
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
  grey = mode in ('L', 'LA')
  colour = np.repeat(a[..., :1], 3, axis=2) if grey else a[..., :3]
  alpha = _scaled(a[..., -1]) if mode in ('LA', 'RGBA') else None
  return LoadedImage(_scaled(colour), alpha, grey, 16 if sixteen else 8)


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
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))

  rows = a.astype('>u2').reshape(h, w * c).view(np.uint8)
  raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
  header = struct.pack('>IIBBBBB', w, h, 16, _PNG_COLOUR_TYPE[c], 0, 0, 0)
  return (PNG_SIGNATURE + chunk(b'IHDR', header)
          + chunk(b'IDAT', zlib.compress(raw, compress_level)) + chunk(b'IEND', b''))


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


def collect_inputs(inputs: Sequence[str], exclude: Path | None = None
                   ) -> tuple[list[tuple[Path, Path]], list[str]]:
  """(input file, output path relative to --output) pairs, and error messages.

  Folders are searched recursively for image suffixes; files are taken as given.
  Two inputs that would write the same output: the second is an error.
  """
  jobs, errors, taken = [], [], {}
  for arg in inputs:
    path = Path(arg)
    if path.is_dir():
      found = [f for f in sorted(path.rglob('*'))
               if f.is_file() and f.suffix.lower() in image_files.IMAGE_SUFFIXES
               and not (exclude is not None and exclude in f.resolve().parents)]
      if not found:
        errors.append(f'{arg}: no image files in this folder')
      pairs = [(f, f.relative_to(path).with_suffix('.png')) for f in found]
    elif path.is_file():
      pairs = [(path, Path(path.name).with_suffix('.png'))]
    else:
      errors.append(f'{arg}: no such file or folder')
      continue
    for src, rel in pairs:
      key = rel.as_posix().lower()
      if key in taken:
        errors.append(f'{src}: skipped, its output {rel} is already written for {taken[key]}')
        continue
      taken[key] = src
      jobs.append((src, rel))
  return jobs, errors


def overwrites(jobs: Sequence[tuple[Path, Path]], output: Path, overlays: bool) -> list[str]:
  """'output <- input' for every planned output that is one of the input files."""
  inputs = {src.resolve(): src for src, _ in jobs}
  clash = []
  for src, rel in jobs:
    targets = [output / rel] + ([output / rel.with_suffix('.decisions.png')] if overlays else [])
    for target in targets:
      if target.resolve() in inputs:
        clash.append(f'{target} would replace input {inputs[target.resolve()]} '
                     f'(the result of {src})')
  return clash


def deblur_files(deblurrer: Deblurrer, jobs: Sequence[tuple[Path, Path]], output: Path,
                 overlays: bool = False, progress: bool = True
                 ) -> tuple[list[str], list[float], list[str]]:
  """Deblurs each (input, relative output) pair; returns (errors, seconds per
  image, how each tiled image was split)."""
  errors, seconds, tiled = [], [], []
  for src, rel in tqdm(jobs, desc='deblur', unit='img', disable=not progress):
    try:
      loaded = read_image(src)
      result = deblurrer(loaded.rgb)
      seconds.append(result.seconds)
      if result.tiles is not None:
        tiled.append(result.tiles.describe())
      files.write_bytes_atomic(output / rel, encode_result(result.restored, loaded))
      if overlays:
        panels.save_png(output / rel.with_suffix('.decisions.png'),
                        panels.decision_panel(loaded.rgb, result), compress_level=6)
    except (DataError, OSError, ValueError, OutOfMemoryError, Image.DecompressionBombError) as e:
      # DataError messages already name the file; OSError ones usually do too.
      msg = str(e) if str(src) in str(e) else f'{src}: {e}'
      errors.append(msg)
      with tqdm.external_write_mode(file=sys.stderr):
        cli.error(msg)
  return errors, seconds, tiled


def run(checkpoint: str, inputs: Sequence[str], output: str, *, step: int | None = None,
        capacity: str | float = 'exact', keep_threshold: float | None = None,
        overlays: bool = False, dtype: str | None = None, self_ensemble: int | None = None,
        tile: int | None = None, tile_overlap: int | None = None,
        max_memory: int | None = None, matmul_precision: str = 'default',
        progress: bool = True) -> int:
  """Deblurs `inputs` (files or folders) into `output`; returns the exit status.

  0 when every file was deblurred; 1 when some input was missing, unreadable
  or ran out of memory (the others are still written); 2 when nothing was
  done: a bad setting, an output that is not a writable folder or would mix
  with the inputs, or a checkpoint that cannot be loaded (all checked before
  any image is read). Tiling arguments are `inference.Deblurrer`'s.
  """
  out = Path(output)
  try:
    overrides = checkpoint_overrides(capacity, keep_threshold, dtype, self_ensemble)
    if inside := [a for a in inputs if Path(a).is_dir() and (
        Path(a).resolve() == out.resolve() or out.resolve() in Path(a).resolve().parents)]:
      raise ValueError(f'--output {out} is the input folder {inside[0]} or holds it: results '
                       'would mix with the photos; choose another --output')
    files.check_writable_dir(out)
  except (OSError, ValueError) as e:
    cli.error(str(e))
    return 2
  jobs, errors = collect_inputs(inputs, exclude=out.resolve())
  if clash := overwrites(jobs, out, overlays):
    cli.error(f'refusing to write over input files: {"; ".join(clash[:5])}'
              f'{" ..." if len(clash) > 5 else ""} (choose another --output)')
    return 2
  for e in errors:
    cli.error(str(e))
  if not jobs:
    return 1
  try:
    if not Path(checkpoint).is_dir():
      raise FileNotFoundError(f'checkpoint directory not found: {checkpoint}')
    # No warm-up: timings here are informative only, and it would double the
    # work of the first image of every size.
    deblurrer = Deblurrer.from_checkpoint(checkpoint, step, overrides, warmup=False, tile=tile,
                                          tile_overlap=tile_overlap, max_memory=max_memory,
                                          matmul_precision=matmul_precision,
                                          progress=progress)
    deblurrer.check_memory()
  except (FileNotFoundError, ValueError, checkpointing.CheckpointError) as e:
    cli.error(str(e))
    return 2
  start = time.perf_counter()
  failed, seconds, tiled = deblur_files(deblurrer, jobs, out, overlays, progress)
  wall = time.perf_counter() - start
  errors += failed
  done = len(jobs) - len(failed)
  mean = (f' in {wall:.1f} s: {np.mean(seconds):.3f} s per image computing, {wall / done:.1f} s '
          'per image in all (compiling each new size, reading and writing included)'
          if seconds else '')
  split = f'; {len(tiled)} ran as tiles ({tiled[-1]})' if tiled else ''
  print(f'Deblurred {done} of {len(jobs)} images into {out}{mean}{split}.')
  if errors:
    print(f'{len(errors)} error(s), listed above.', file=sys.stderr)
    return 1
  return 0


def _define_flags() -> None:
  # Defined only when run as a program: importing this module (tests,
  # evaluate.py) must not claim flag names.
  cli.define_inference_flags()
  flags.DEFINE_string('output', None, 'Output folder.')
  flags.DEFINE_bool('overlays', False, 'Also write NAME.decisions.png with the windows '
                    'kept by each pruning stage.')


def main(argv: list[str]) -> None:
  fl = flags.FLAGS
  for name in ('checkpoint', 'output'):
    if not fl[name].value:
      raise app.UsageError(f'--{name} is required.')
  if len(argv) < 2:
    raise app.UsageError('Give at least one image file or folder.')
  compilation_cache.enable()
  sys.exit(run(fl.checkpoint, argv[1:], fl.output, step=fl.step, overlays=fl.overlays,
               **cli.inference_settings()))


if __name__ == '__main__':
  _define_flags()
  cli.run(main, quiet=True)
