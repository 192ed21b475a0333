"""Atomic file writes: readers never see a half-written file.

Every file the project writes beside checkpoints (JSON records, logs rewritten
on resume, PNG results and panels, tables) goes through a temporary file in
the same folder, `fsync`, and a rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _current_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _current_umask()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same folder and a rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode.
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as indented JSON (sorted keys), atomically."""
  write_bytes_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def check_writable_dir(path: str | os.PathLike, what: str = '--output') -> Path:
  """Creates folder `path` if needed and checks a file can be written in it,
  so a command fails before its work, not after.

  Raises:
    NotADirectoryError: `path` is an existing file.
    PermissionError: the folder cannot be created or written (names `what`).
  """
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f'{what} {path} is an existing file; give a folder')
  try:
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix='.write_check.')
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise PermissionError(f'{what} {path} is not writable ({e.strerror or e})') from None
  return path
