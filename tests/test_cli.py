"""Every documented entry point runs as written, and fails the same way: one line."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

ENTRY_POINTS = [
    ['train.py'], ['evaluate.py'], ['demo.py'],
    ['-m', 'lmdvit_jax.deblur'], ['-m', 'lmdvit_jax.convert'], ['-m', 'lmdvit_jax.data.build'],
    ['benchmarks/inference.py'], ['benchmarks/train_step.py'],
    ['benchmarks/linear_headroom.py'], ['benchmarks/pruning_ranking.py'],
    ['benchmarks/blur_cues.py'], ['benchmarks/synthetic_stats.py'],
    ['benchmarks/train_step_parts.py'], ['benchmarks/sharp_damage.py'],
    ['benchmarks/blur_detection_ceiling.py'], ['benchmarks/matmul_floor.py'],
]


def _run(args, cwd=REPO, timeout=180):
  # No PYTHONPATH: the installed (editable) package must be what is imported.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize('entry', ENTRY_POINTS, ids=lambda e: e[-1])
def test_help_of_every_entry_point(entry):
  proc = _run([*entry, '--help'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert len(proc.stdout) > 100


def test_quiet_commands_log_warnings_only_unless_asked(tmp_path):
  script = tmp_path / 'quiet_command.py'
  script.write_text(
      'from absl import logging\n'
      'from lmdvit_jax import cli\n'
      'def main(argv):\n'
      '  logging.info("chatter")\n'
      '  logging.warning("worth saying")\n'
      'if __name__ == "__main__":\n'
      '  cli.run(main, quiet=True)\n')
  proc = _run([str(script)], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'worth saying' in proc.stderr and 'chatter' not in proc.stderr
  proc = _run([str(script), '--verbosity=0'], cwd=tmp_path)
  assert 'worth saying' in proc.stderr and 'chatter' in proc.stderr


def test_convert_names_a_damaged_file(tmp_path):
  bad = tmp_path / 'weights.npz'
  np.savez(bad, a=np.zeros(1000))
  bad.write_bytes(bad.read_bytes()[:200])  # truncated zip
  proc = _run(['-m', 'lmdvit_jax.convert', str(bad), str(tmp_path / 'out')])
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('convert.py: error:') and str(bad) in lines[0]
  assert not (tmp_path / 'out').exists()
  # A readable .npz that is not an LMD-ViT state dict: named too.
  other = tmp_path / 'other.npz'
  np.savez(other, fc=np.zeros((2, 2)))
  proc = _run(['-m', 'lmdvit_jax.convert', str(other), str(tmp_path / 'out')])
  assert proc.returncode == 2 and str(other) in proc.stderr and 'Traceback' not in proc.stderr
