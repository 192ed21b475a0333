"""JAX's persistent compilation cache, on by default for the project's commands.

Compiling the train step takes minutes on a CPU and each new image size costs
tens of seconds in `'exact'` mode; with the cache, a second run (a resumed
training, another `evaluate.py` or `deblur` call, the demo) loads the compiled
programs from disk instead.

    LMDVIT_COMPILATION_CACHE=DIR   cache directory (default ~/.cache/lmdvit_jax/xla)
    LMDVIT_COMPILATION_CACHE=off   no persistent cache ('0', 'false', 'no' too)

JAX's own setting (`JAX_COMPILATION_CACHE_DIR`) is respected when present.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = 'LMDVIT_COMPILATION_CACHE'
DEFAULT_DIR = Path('~/.cache/lmdvit_jax/xla')
_OFF = ('off', '0', 'false', 'no', 'none', '')


def cache_dir() -> Path | None:
  """The directory the cache uses, or None when `LMDVIT_COMPILATION_CACHE` turns it off."""
  value = os.environ.get(ENV)
  if value is None:
    return DEFAULT_DIR.expanduser()
  if value.strip().lower() in _OFF:
    return None
  return Path(value).expanduser()


def enable(
  directory: str | os.PathLike | None = None, min_compile_seconds: float = 1.0
) -> Path | None:
  """Turns the persistent cache on (unless the environment turns it off).

  Args:
    directory: overrides the directory of `cache_dir()`.
    min_compile_seconds: programs that compile faster than this are not cached.

  Returns:
    The directory in use, or None if the cache stays off.
  """
  path = Path(directory).expanduser() if directory is not None else cache_dir()
  if path is None:
    return None
  if directory is None and jax.config.jax_compilation_cache_dir:
    path = Path(jax.config.jax_compilation_cache_dir)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None  # A read-only home: run without the cache rather than fail.
  jax.config.update('jax_compilation_cache_dir', str(path))
  # Cache every program that took a noticeable time to compile, whatever its size.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_seconds))
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return path
