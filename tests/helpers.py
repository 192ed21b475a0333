"""Helpers shared by the tests (not a test module): the small training config,
the environment of test subprocesses, the shared compilation cache and where
the golden fixtures live. Fixtures are in conftest.py."""

import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile

import jax
import ml_collections

from configs import tiny

# The tiny model in masked mode: tests that share it share its compiled programs.
TINY = dict(tiny.get_config().model, capacity='masked')

REPO = Path(__file__).resolve().parents[1]
CACHE_DIR = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
  tempfile.gettempdir(), 'lmdvit_jax_test_compilation_cache'
)
if not jax.config.jax_compilation_cache_dir:
  jax.config.update('jax_compilation_cache_dir', CACHE_DIR)


def small_config() -> ml_collections.ConfigDict:
  """configs/tiny.py shrunk for tests: 9 blocks of window 4, 64x64 patches, batch 4.

  The schedule restarts every 1000 steps so it does not depend on
  `num_train_steps`: runs of any length share one compiled step.
  """
  config = tiny.get_config()
  config.model.update(win_size=4, depths=(1,) * 9)
  config.update(
    batch_size=4,
    patch_size=64,
    num_train_steps=6,
    log_every_steps=2,
    checkpoint_every_steps=2,
    keep_checkpoints=2,
    eval_every_steps=3,
  )
  config.optim.update(lr=1e-3, warmup_steps=2, restart_every=1000, end_lr=1e-5, grad_clip=1.0)
  config.data.update(sources=('synthetic',), num_threads=1)
  config.eval.update(source='synthetic?size=64&count=1', max_images=1)
  return config


def subprocess_env(**extra) -> dict[str, str]:
  """The environment of the commands tests start: the shared compilation cache,
  and no restart onto huge pages unless asked (`LMDVIT_HUGE_PAGES`): for the
  tests' small programs huge pages cost more than they save (docs/tests.md)."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE_DIR, **extra)
  env.setdefault('LMDVIT_HUGE_PAGES', '0')
  env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
  return env


def reference_dir() -> Path:
  """`$LMDVIT_REFERENCE_DIR`, else `../shared/reference` beside the clone, else
  `tests/reference`."""
  env = os.environ.get('LMDVIT_REFERENCE_DIR')
  for cand in ([Path(env)] if env else []) + [
    REPO.parent / 'shared' / 'reference',
    REPO / 'tests' / 'reference',
  ]:
    if cand.is_dir() and any(cand.glob('fixture_*_meta.json')):
      return cand
  raise FileNotFoundError('no reference fixtures found (set LMDVIT_REFERENCE_DIR)')


def fixture_names() -> list[str]:
  try:
    return sorted(p.name[: -len('_meta.json')] for p in reference_dir().glob('fixture_*_meta.json'))
  except FileNotFoundError:
    return []


def run_commands(
  commands: list[list[str]], cwd: Path = REPO, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess]:
  """Each `python COMMAND...` (`['train.py', ...]`, `['-m', 'pkg.mod', ...]`),
  as its own process would run it, all in one interpreter that imports the
  libraries once (tests/entry_points.py): for checks of a command's start, its
  flags, help and first-line errors."""
  runner = subprocess.run(
    [sys.executable, str(REPO / 'tests' / 'entry_points.py'), json.dumps(commands)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert runner.returncode == 0, runner.stderr[-3000:]
  results = [json.loads(line) for line in runner.stdout.splitlines()]
  assert [r['command'] for r in results] == commands, runner.stdout[-3000:]
  return [
    subprocess.CompletedProcess(r['command'], r['returncode'], r['stdout'], r['stderr'])
    for r in results
  ]
