"""One writer per workdir: a second run is refused, a killed one holds nothing."""

import signal
import subprocess
import sys

import pytest

from lmdvit_jax import workdir_lock
from lmdvit_jax.errors import WorkdirInUseError
from tests.helpers import REPO, subprocess_env

HOLD = '''
import sys, time
from lmdvit_jax import workdir_lock
with workdir_lock.held(sys.argv[1]):
  print('held', flush=True)
  time.sleep(600)
'''


def _holder(workdir):
  proc = subprocess.Popen(
    [sys.executable, '-c', HOLD, str(workdir)],
    cwd=REPO,
    env=subprocess_env(),
    stdout=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline().strip() == 'held'
  return proc


def test_a_second_run_is_refused_and_a_killed_one_holds_nothing(tmp_path):
  workdir = tmp_path / 'run'
  holder = _holder(workdir)
  try:
    with pytest.raises(
      WorkdirInUseError,
      match=f'{workdir} is in use by process {holder.pid} '
      r'on .* \(started .*\): wait for it',
    ):
      with workdir_lock.held(workdir):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  assert (workdir / workdir_lock.LOCK_FILE).is_file()  # Left behind, and blocking nothing:
  with workdir_lock.held(workdir):
    with pytest.raises(WorkdirInUseError):  # ... now this process holds it.
      with workdir_lock.held(workdir):
        pass
  with workdir_lock.held(workdir):  # Released at the end of the block.
    pass
