"""Frames decoded once: the data-spec option `cache=DIR` of file-based sources.

    reloblur:/data/ReLoBlur?cache=/fast/cache            (gopro:..., pairs:... alike)
    python -m lmdvit_jax.data.build 'reloblur:/data/ReLoBlur?cache=/fast/cache'

A 512x512 crop of a 2152x1436 ReLoBlur frame read from PNG decodes three whole
files (about 0.3 s of one core). Read from the cache it touches only the
crop's rows of uncompressed, memory-mapped arrays, and the crop's corner is
drawn from the mask's runs (`crops.mask_runs`) without reading the mask, so a
crop costs milliseconds and the batches are the PNG path's, bit for bit.
Frames are decoded on first read, or ahead of time by the build command,
which prints the disk space it will take first. Memory stays bounded: frames
live on disk (and in the page cache), a process keeps at most `OPEN_FRAMES`
of them mapped.

Each source has its own folder in DIR, so one DIR serves several sources:

    DIR/<kind>-<split>-<key>/source.json          the format and what is cached
    DIR/<kind>-<split>-<key>/frames/<name>.frame  one decoded frame

A frame file is `MAGIC`, the header's length (8 bytes, little-endian) and a
JSON header (format, the arrays' offsets, shapes and dtypes, and the size and
modification time of every file the frame was decoded from), padded to a
4096-byte page, then the arrays: `blur`, `sharp` uint8 [H, W, 3], `mask` uint8
[H, W, 1] in {0, 1} (left out when the source has no masks: all ones) and
`mask_runs` int32 [R, 3]. A frame is written whole to a temporary file and
renamed, so nothing reads half a frame and an interrupted build leaves only
frames still to decode (and temporary files the next build removes). Opening
the cache checks every decoded frame against its source files: a changed file
is named, with the command that refreshes it; a cache of another format is
refused with the command that rebuilds it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import threading
import time
from typing import Any

import numpy as np

from lmdvit_jax import files, image_io
from lmdvit_jax.data import crops
from lmdvit_jax.data.examples import DataError, Example, Source
from lmdvit_jax.data.readers import FileTriplesSource

log = logging.getLogger(__name__)

FORMAT = 1  # Of source.json and frame files; another format is refused.
MAGIC = b'LMDVFRM\n'
OPEN_FRAMES = 32  # Frames a process keeps memory-mapped (the least recently used is closed).
_PAGE = 4096
_ALIGN = 64
_STALE_TEMP_SECONDS = 600  # A build removes temporary frame files older than this.


def _round_up(n: int, k: int) -> int:
  return -(-n // k) * k


def _gb(n: float) -> str:
  return f'{n / 1e9:.2f} GB'


def _file_stat(path: Path) -> list:
  st = os.stat(path)
  return [str(path), st.st_size, st.st_mtime_ns]


def frame_buffers(example: Example, source_files: list[list], with_mask: bool) -> tuple[list, int]:
  """A decoded example as the buffers of a frame file, and their total size."""
  arrays = {'blur': example['blur'], 'sharp': example['sharp']}
  if with_mask:
    arrays['mask'] = example['mask']
  arrays['mask_runs'] = crops.mask_runs(example['mask'])
  layout, offset = {}, 0
  for key, a in arrays.items():
    layout[key] = [offset, list(a.shape), a.dtype.str]
    offset = _round_up(offset + a.nbytes, _ALIGN)
  header = json.dumps(
    {
      'format': FORMAT,
      'name': example['name'],
      'arrays': layout,
      'data_size': offset,
      'files': source_files,
    }
  ).encode()
  head = MAGIC + len(header).to_bytes(8, 'little') + header
  head += bytes(_round_up(len(head), _PAGE) - len(head))
  buffers: list[bytes | memoryview] = [head]
  end = 0
  for key, a in arrays.items():
    start = layout[key][0]
    buffers += [bytes(start - end), np.ascontiguousarray(a).data]
    end = start + a.nbytes
  buffers.append(bytes(offset - end))
  return buffers, len(head) + offset


def read_header(path: Path) -> tuple[dict[str, Any], int]:
  """(header, offset of the arrays) of a frame file.

  Raises:
    DataError: not a frame file, or cut short.
  """
  with open(path, 'rb') as f:
    head = f.read(_PAGE)
    length = int.from_bytes(head[len(MAGIC) : len(MAGIC) + 8], 'little')
    start = len(MAGIC) + 8
    if head[: len(MAGIC)] != MAGIC:
      raise DataError(f'{path} is not a frame file')
    if start + length > len(head):
      head += f.read(start + length - len(head))
    try:
      header = json.loads(head[start : start + length])
    except ValueError:
      raise DataError(f'{path} has a damaged header') from None
    size = os.fstat(f.fileno()).st_size
  data_start = _round_up(start + length, _PAGE)
  if header.get('format') == FORMAT and size != data_start + header['data_size']:
    raise DataError(f'{path} is cut short ({size} of {data_start + header["data_size"]} bytes)')
  return header, data_start


def _map_frame(path: Path) -> dict[str, np.ndarray]:
  """The arrays of a frame file, as read-only views of one memory map."""
  header, start = read_header(path)
  mapped = np.memmap(path, np.uint8, 'r')
  arrays = {}
  for key, (offset, shape, dtype) in header['arrays'].items():
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    arrays[key] = mapped[start + offset : start + offset + n].view(dtype).reshape(shape)
  return arrays


class CachedSource(Source):
  """A file-based source whose frames are read from a frame cache (module docstring).

  `src.example(i)` gives memory-mapped uint8 arrays (crop them: only the
  crop's rows are read) and `mask_runs`; `src[i]` the float32 sample.
  """

  def __init__(
    self,
    source: FileTriplesSource,
    directory: str | os.PathLike,
    label: str,
    identity: str,
    spec: str,
    verify: bool = True,
  ):
    """Opens (and creates) the cache folder of `source` in `directory`.

    Args:
      source: the reader of the original files.
      directory: the DIR of `cache=DIR`.
      label: the start of the folder's name, e.g. 'reloblur-train'.
      identity: what names the source (kind, resolved root, split, options):
        its hash names the folder.
      spec: the data spec as the build command takes it (for messages).
      verify: refuse frames whose source files changed or that are damaged
        (the build command opens with False and decodes them again).

    Raises:
      DataError: (with `verify`) a cache of another format, changed source
        files or damaged frames, each with the command that mends it.
      PermissionError: the folder cannot be created.
    """
    self.source, self.spec, self.identity = source, spec, identity
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    self.folder = Path(directory).expanduser() / f'{label}-{digest}'
    self.with_mask = source.triples[0][3] is not None
    self._open_folder()
    if verify and self.format != FORMAT:
      raise DataError(self.format_message())
    self.missing, problems = self.inspect()
    if verify and problems:
      raise DataError(self._problems_message(problems))
    self._maps: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()

  # --- The folder and its frames.

  def _open_folder(self) -> None:
    """Creates the folder and its record, or reads the record's format."""
    record = self.folder / 'source.json'
    self.format: int | str | None = FORMAT
    if record.is_file():
      try:
        self.format = json.loads(record.read_text()).get('format')
      except ValueError:
        self.format = 'unreadable'
      return
    try:
      files.write_json_atomic(
        record,
        {'format': FORMAT, 'identity': self.identity, 'spec': self.spec, 'frames': len(self)},
      )
    except OSError as e:
      raise PermissionError(
        f'Cannot create the frame cache {self.folder}: {e.strerror or e}'
      ) from None

  def format_message(self) -> str:
    return (
      f'The frame cache {self.folder} was written in format {self.format}; this version '
      f"reads format {FORMAT}. Rebuild it: python -m lmdvit_jax.data.build '{self.spec}' "
      '--overwrite'
    )

  def clear(self) -> None:
    """Removes every decoded frame and starts the folder afresh (any format)."""
    shutil.rmtree(self.folder)
    self._open_folder()

  def frame_path(self, index: int) -> Path:
    return self.folder / 'frames' / (self.source.triples[index][0] + '.frame')

  def _source_files(self, index: int) -> list[list]:
    return [_file_stat(p) for p in self.source.triples[index][1:] if p is not None]

  def inspect(self) -> tuple[list[int], list[tuple[int, str]]]:
    """(frames not decoded yet, [(frame, what is wrong)] for decoded frames
    whose source files changed or that cannot be read)."""
    missing, problems = [], []
    for i in range(len(self)):
      path = self.frame_path(i)
      if not path.is_file():
        missing.append(i)
        continue
      try:
        header, _ = read_header(path)
      except (OSError, DataError) as e:
        problems.append((i, f'damaged frame: {e}'))
        continue
      if header.get('format') != FORMAT:
        problems.append((i, f'{path} is in format {header.get("format")}, not {FORMAT}'))
        continue
      for (name, size, mtime), (_, now_size, now_mtime) in zip(
        header['files'], self._source_files(i)
      ):
        if (size, mtime) != (now_size, now_mtime):
          problems.append(
            (
              i,
              f'{name} changed since it was decoded (size {size} -> '
              f'{now_size} bytes, modified {time.ctime(now_mtime / 1e9)})',
            )
          )
          break
    return missing, problems

  def _problems_message(self, problems: list[tuple[int, str]]) -> str:
    shown = '; '.join(p for _, p in problems[:3])
    more = f' and {len(problems) - 3} more' if len(problems) > 3 else ''
    return (
      f'The frame cache {self.folder} is out of date for {len(problems)} frame(s): '
      f"{shown}{more}. Decode them again: python -m lmdvit_jax.data.build '{self.spec}'"
    )

  def frame_bytes(self, index: int) -> int:
    """The size of frame `index`'s file, from its source's header (no decoding)."""
    h, w = image_io.image_size(self.source.triples[index][1])
    return (
      _PAGE + _round_up(h * w * 3, _ALIGN) * 2 + (_round_up(h * w, _ALIGN) if self.with_mask else 0)
    )

  def decode(self, index: int) -> None:
    """Decodes frame `index` from its source files into the cache.

    Raises:
      DataError: the source files cannot be read, or the disk is full (naming
        the folder).
    """
    stats = self._source_files(index)  # Before decoding: a file changed meanwhile is stale.
    example = self.source.example(index)
    buffers, _ = frame_buffers(example, stats, self.with_mask)
    try:
      files.write_bytes_atomic(self.frame_path(index), buffers)
    except OSError as e:
      if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DataError(
          f'No space left for the frame cache in {self.folder} (a frame of '
          f'{example["name"]} needs {_gb(sum(len(memoryview(b)) for b in buffers))}'
          '); free some or give another cache=DIR'
        ) from None
      raise

  def remove_temporaries(self, older_than: float = _STALE_TEMP_SECONDS) -> int:
    """Removes temporary frame files a killed writer left; returns how many."""
    now, removed = time.time(), 0
    for tmp in (self.folder / 'frames').rglob(f'.*{files.TEMP_SUFFIX}'):
      try:
        if now - tmp.stat().st_mtime > older_than:
          tmp.unlink()
          removed += 1
      except FileNotFoundError:
        pass
    return removed

  # --- The Source interface.

  @property
  def names(self) -> list[str]:
    return self.source.names

  def __len__(self) -> int:
    return len(self.source)

  def _arrays(self, index: int) -> dict[str, np.ndarray]:
    with self._lock:
      arrays = self._maps.get(index)
      if arrays is not None:
        self._maps.move_to_end(index)
        return arrays
    path = self.frame_path(index)
    if not path.is_file():
      self.decode(index)
    arrays = _map_frame(path)
    with self._lock:
      self._maps[index] = arrays
      while len(self._maps) > OPEN_FRAMES:
        self._maps.popitem(last=False)
    return arrays

  def _example(self, index: int) -> Example:
    arrays = self._arrays(index)
    blur = arrays['blur']
    mask = arrays.get('mask')
    if mask is None:  # All ones, as the reader makes them, without the memory.
      mask = np.broadcast_to(np.ones((1, 1, 1), np.uint8), blur.shape[:2] + (1,))
    return {
      'blur': blur,
      'sharp': arrays['sharp'],
      'mask': mask,
      'mask_runs': arrays['mask_runs'],
      'name': self.source.triples[index][0],
    }

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ('_maps', '_lock')}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._maps, self._lock = collections.OrderedDict(), threading.Lock()

  def __repr__(self) -> str:
    return f'CachedSource({self.source!r} in {self.folder})'


def build(
  source: CachedSource,
  overwrite: bool = False,
  jobs: int | None = None,
  progress: bool = True,
  report=print,
) -> dict[str, Any]:
  """Decodes every frame of `source` not yet in its cache (or out of date);
  `overwrite` removes the cache first (also one of another format).

  Prints (through `report`) the frames to decode and the space they take
  before any work; refuses when the disk has less free.

  Returns:
    {'frames', 'decoded', 'bytes' (of the whole cache), 'seconds'}.
  """
  if overwrite:
    source.clear()
  elif source.format != FORMAT:
    raise DataError(source.format_message())
  missing, problems = source.inspect()
  todo = sorted(missing + [i for i, _ in problems])
  for _, problem in problems:
    log.warning('Decoding again: %s', problem)
  sizes = {i: source.frame_bytes(i) for i in range(len(source))}
  need = sum(sizes[i] for i in todo)
  free = shutil.disk_usage(source.folder).free
  report(
    f'{source.source.description}: {len(source)} frames, {_gb(sum(sizes.values()))} '
    f'decoded; {len(todo)} to decode ({_gb(need)}) into {source.folder} '
    f'({_gb(free)} free)'
  )
  if need > free:
    raise DataError(
      f'Not enough space for the frame cache in {source.folder}: '
      f'{_gb(need)} needed, {_gb(free)} free'
    )
  source.remove_temporaries()
  t0 = time.perf_counter()
  jobs = jobs or len(os.sched_getaffinity(0))
  with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
    done = pool.map(source.decode, todo)
    if progress and todo:
      import tqdm

      done = tqdm.tqdm(done, total=len(todo), unit='frame')
    for _ in done:
      pass
  return {
    'frames': len(source),
    'decoded': len(todo),
    'bytes': sum(sizes.values()),
    'seconds': time.perf_counter() - t0,
  }
