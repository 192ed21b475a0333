"""One writer per workdir: a lock that a killed process does not keep.

A run holds an exclusive `flock` on `WORKDIR/.lock` for as long as it lives.
The kernel drops the lock when the process ends, however it ends (`kill -9`
included), so no stale lock ever blocks the next run; the file itself only
says who holds it (pid, host, start time, command) for the message a second
run prints. On a pod, process 0 takes the lock and tells every process
whether it got it, so a second job on a workdir in use is refused by all of
its processes before any of them starts a step.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import fcntl
import json
import os
from pathlib import Path
import socket
import sys
import time

import jax
import numpy as np

from lmdvit_jax.errors import WorkdirInUseError

LOCK_FILE = '.lock'


def _holder(fd: int) -> str:
  """Who holds the lock, from what the holder wrote in the file."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 65536).decode() or '{}')
  except (OSError, ValueError):
    info = {}
  if not info:
    return 'another process'
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('started', 0)))
  return (
    f'process {info.get("pid")} on {info.get("host")} (started {started}: '
    f'{info.get("command", "?")})'
  )


def _agree(ok: bool) -> bool:
  """Process 0's answer, on every process (several processes: a collective)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def held(workdir: str | os.PathLike) -> Iterator[Path]:
  """Holds the lock of `workdir` (created if needed) for the `with` block.

  Raises:
    WorkdirInUseError: another run holds it; the message names it (on
      process 0) and says what to do.
  """
  workdir = Path(workdir)
  path = workdir / LOCK_FILE
  fd, ok, holder = None, True, ''
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      ok, holder = False, _holder(fd)
      os.close(fd)
      fd = None
  if not _agree(ok):
    holder = holder or 'another run (process 0 of this job names it)'
    raise WorkdirInUseError(
      f'{workdir} is in use by {holder}: wait for it to finish or stop '
      'it (a killed run holds nothing), or give another --workdir'
    )
  try:
    if fd is not None:
      record = {
        'pid': os.getpid(),
        'host': socket.gethostname(),
        'started': time.time(),
        'command': ' '.join(sys.argv)[:500],
      }
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(record).encode(), 0)
    yield path
  finally:
    if fd is not None:
      os.close(fd)  # Releases the lock; the file stays (an unlocked file blocks nothing).
