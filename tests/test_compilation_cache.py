"""The persistent compilation cache: on by default, in a chosen folder, or off."""

import os
import subprocess
import sys

from tests.helpers import REPO

SCRIPT = '''
import jax, jax.numpy as jnp
from lmdvit_jax import compilation_cache
print('dir:', compilation_cache.enable(min_compile_seconds=0))
print(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).sum())
'''


def _run(tmp_path, value):
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ('JAX_COMPILATION_CACHE_DIR', 'LMDVIT_COMPILATION_CACHE')
  }
  env['HOME'] = str(tmp_path / 'home')
  if value is not None:
    env['LMDVIT_COMPILATION_CACHE'] = value
  proc = subprocess.run(
    [sys.executable, '-c', SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout


def test_cache_writes_compiled_programs_where_asked(tmp_path):
  out = _run(tmp_path, str(tmp_path / 'cache'))
  assert f'dir: {tmp_path / "cache"}' in out
  assert any((tmp_path / 'cache').iterdir())


def test_cache_off(tmp_path):
  assert 'dir: None' in _run(tmp_path, 'off')
  assert not (tmp_path / 'home' / '.cache').exists()


def test_cache_on_by_default_under_home(tmp_path):
  out = _run(tmp_path, None)
  default = tmp_path / 'home' / '.cache' / 'lmdvit_jax' / 'xla'
  assert f'dir: {default}' in out and any(default.iterdir())
