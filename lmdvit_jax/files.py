"""Atomic file writes: readers never see a half-written file.

Every file the project writes beside checkpoints (JSON records, logs rewritten
on resume, PNG results and panels, tables) goes through a temporary file in
the same folder, `fsync`, and a rename. Every JSON it writes is strict JSON
(`jsonable`: no NaN or Infinity).
"""

from __future__ import annotations

from collections.abc import Buffer, Mapping, Sequence
import json
import math
import os
from pathlib import Path
import tempfile
from typing import Any

import numpy as np


def _current_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _current_umask()
TEMP_SUFFIX = '.tmp'  # Of the temporary files (`.NAME.XXXX.tmp`) a write leaves if killed.


def write_bytes_atomic(path: str | os.PathLike, data: bytes | Sequence[Buffer]) -> None:
  """Writes `data` (bytes, or buffers written one after another) to `path`
  through a temporary file in the same folder and a rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix=TEMP_SUFFIX)
  try:
    with os.fdopen(fd, 'wb') as f:
      for chunk in [data] if isinstance(data, (bytes, bytearray)) else data:
        f.write(chunk)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode.
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def jsonable(obj: Any) -> Any:
  """`obj` as strict JSON holds it: NaN and infinities -> None (JSON has
  neither), numpy arrays and scalars -> lists and Python numbers, tuples ->
  lists, keys -> strings."""
  if isinstance(obj, Mapping):
    return {str(k): jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return jsonable(obj.tolist())
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  return obj


def json_line(obj: Any) -> str:
  """One line of strict JSON (`jsonable`), as JSON-lines logs hold them."""
  return json.dumps(jsonable(obj), allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as indented strict JSON (`jsonable`, sorted keys), atomically."""
  write_bytes_atomic(
    path, json.dumps(jsonable(obj), indent=1, sort_keys=True, allow_nan=False).encode()
  )


def check_writable_dir(path: str | os.PathLike, what: str = '--output') -> Path:
  """Checks that folder `path` can be written, or created and written, so a
  command fails before its work, not after; creates nothing (a refused
  command leaves no empty folder behind).

  Raises:
    NotADirectoryError: `path`, or the nearest existing folder above it, is a file.
    PermissionError: the folder cannot be created or written (names `what`).
  """
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f'{what} {path} is an existing file; give a folder')
  existing = path
  while not existing.exists():  # The nearest folder that exists: where it would be created.
    existing = existing.parent
  if not existing.is_dir():
    raise NotADirectoryError(f'{what} {path} is not writable: {existing} is a file')
  try:
    fd, probe = tempfile.mkstemp(dir=existing, prefix='.write_check.')
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise PermissionError(f'{what} {path} is not writable ({e.strerror or e})') from None
  return path
