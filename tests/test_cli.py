"""Every documented entry point runs as written, and fails the same way: one line."""

import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, run_commands, subprocess_env

ENTRY_POINTS = (
  [
    ['train.py'],
    ['evaluate.py'],
    ['demo.py'],
    ['-m', 'lmdvit_jax.deblur'],
    ['-m', 'lmdvit_jax.convert'],
    ['-m', 'lmdvit_jax.data.build'],
    ['-m', 'lmdvit_jax.export'],
  ]
  + [
    ['-m', f'benchmarks.{name}']
    for name in (
      'inference',
      'train_step',
      'train_step_parts',
      'matmul_floor',
      'tiling',
      'accelerator',
      'input_pipeline',
      'inference_parts',
    )
  ]
  + [
    ['-m', f'analyses.{name}']
    for name in (
      'linear_headroom',
      'pruning_ranking',
      'blur_cues',
      'synthetic_stats',
      'sharp_damage',
      'blur_detection_ceiling',
    )
  ]
)


def _one_error_line(proc, prog, *needles):
  """The command failed with status 2 and said why in exactly one line."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith(f'{prog}: error:'), lines[0]
  for needle in needles:
    assert needle in lines[0], lines[0]


def _env() -> dict[str, str]:
  # No PYTHONPATH: the installed (editable) package must be what is imported.
  return {k: v for k, v in subprocess_env().items() if k != 'PYTHONPATH'}


def _run(args, cwd=REPO, timeout=180):
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
  )


# Flags each command's --help must list (defined in cli for several commands).
OWN_FLAGS = {
  'lmdvit_jax.deblur': (
    '--checkpoint',
    '--tile',
    '--max_memory',
    '--capacity',
    '--self_ensemble',
    '--output',
    '--overlays',
  ),
  'evaluate.py': (
    '--checkpoint',
    '--tile',
    '--max_memory',
    '--capacity',
    '--self_ensemble',
    '--data',
  ),
  'lmdvit_jax.export': ('--checkpoint', '--capacity', '--self_ensemble', '--size', '--overwrite'),
  'train.py': ('--config', '--workdir', '--allow_config_change'),
}


@pytest.fixture(scope='module')
def helps() -> dict[str, subprocess.CompletedProcess]:
  """`python ENTRY --help` of every entry point, in one interpreter (the
  libraries imported once, not 21 times)."""
  procs = run_commands([[*entry, '--help'] for entry in ENTRY_POINTS], env=_env())
  return {proc.args[-2]: proc for proc in procs}


@pytest.mark.parametrize('entry', ENTRY_POINTS, ids=lambda e: e[-1])
def test_help_of_every_entry_point(entry, helps):
  proc = helps[entry[-1]]
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert len(proc.stdout) > 100
  for flag in OWN_FLAGS.get(entry[-1], ()):
    assert re.search(rf'^  --(\[no\])?{flag[2:]}\b', proc.stdout, re.M), (flag, proc.stdout)
  assert 'absl.logging' not in proc.stdout  # Its own flags, not absl's (--helpfull lists those).


def test_ctrl_c_before_training_starts_is_one_line(tmp_path):
  """SIGINT while train.py is still setting up (data, model, compilation)."""
  proc = subprocess.Popen(
    [sys.executable, 'train.py', '--config=configs/tiny.py', f'--workdir={tmp_path}'],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=_env(),
  )
  lines = []
  for line in proc.stdout:  # The first log line: the run has started setting up.
    lines.append(line)
    if 'devices' in line:
      break
  proc.send_signal(signal.SIGINT)
  out = ''.join(lines) + proc.communicate(timeout=300)[0]
  assert proc.returncode == 130, out[-3000:]
  assert out.strip().splitlines()[-1] == (
    'train.py: error: interrupted (Ctrl-C); nothing is left half-written'
  )
  assert 'Traceback' not in out and 'KeyboardInterrupt' not in out
  assert not list(tmp_path.rglob('*.tmp'))


def test_a_ctrl_c_that_lands_in_a_finalizer_still_stops_the_command(tmp_path):
  """Python swallows an exception raised in a finalizer or a gc callback (JAX
  runs one at each collection): the Ctrl-C is raised again, in ordinary code."""
  script = tmp_path / 'finalizer.py'
  script.write_text(
    'import gc, os, signal, time\n'
    'from lmdvit_jax import cli\n'
    'class Finalized:\n'
    '  def __del__(self):\n'
    '    os.kill(os.getpid(), signal.SIGINT)\n'
    'def main(argv):\n'
    '  Finalized()\n'
    '  gc.collect()\n'
    '  for _ in range(500):\n'
    '    time.sleep(0.01)\n'
    '  print("carried on")\n'
    'if __name__ == "__main__":\n'
    '  cli.run(main)\n'
  )
  proc = _run([str(script)], cwd=tmp_path)
  assert proc.returncode == 130, proc.stdout + proc.stderr
  assert 'carried on' not in proc.stdout
  assert proc.stderr.strip() == (
    'finalizer.py: error: interrupted (Ctrl-C); nothing is left half-written'
  )


def test_quiet_commands_log_warnings_only_unless_asked(tmp_path):
  script = tmp_path / 'quiet_command.py'
  script.write_text(
    'from absl import logging\n'
    'from lmdvit_jax import cli\n'
    'def main(argv):\n'
    '  logging.info("chatter")\n'
    '  logging.warning("worth saying")\n'
    'if __name__ == "__main__":\n'
    '  cli.run(main, quiet=True)\n'
  )
  proc = _run([str(script)], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'worth saying' in proc.stderr and 'chatter' not in proc.stderr
  proc = _run([str(script), '--verbosity=0'], cwd=tmp_path)
  assert 'worth saying' in proc.stderr and 'chatter' in proc.stderr


def test_convert_names_a_damaged_file(tmp_path):
  bad = tmp_path / 'weights.npz'
  np.savez(bad, a=np.zeros(1000))
  bad.write_bytes(bad.read_bytes()[:200])  # truncated zip
  # A readable .npz that is not an LMD-ViT state dict: named too.
  other = tmp_path / 'other.npz'
  np.savez(other, fc=np.zeros((2, 2)))
  procs = run_commands(
    [['-m', 'lmdvit_jax.convert', str(f), str(tmp_path / 'out')] for f in (bad, other)], env=_env()
  )
  for proc, f in zip(procs, (bad, other)):
    _one_error_line(proc, 'convert.py', str(f))
  assert not (tmp_path / 'out').exists()


REFERENCE = REPO.parent / 'shared' / 'reference' / 'fixture_a_weights.npz'


@pytest.mark.skipif(not REFERENCE.is_file(), reason='reference weights not found')
def test_convert_never_replaces_a_checkpoint_unasked_and_stays_quiet(tmp_path):
  convert = ['-m', 'lmdvit_jax.convert', str(REFERENCE), str(tmp_path / 'converted')]
  first, again, forced = run_commands([convert, convert, [*convert, '--overwrite']], env=_env())
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stderr.strip() == ''  # no INFO lines from jax or orbax
  _one_error_line(again, 'convert.py', 'already holds checkpoint steps [0]', '--overwrite')
  assert forced.returncode == 0, forced.stderr[-3000:]
  assert sorted(p.name for p in (tmp_path / 'converted' / 'checkpoints').iterdir()) == ['0']


def test_user_mistakes_are_one_line_before_any_work(tmp_path, checkpoint):
  """Each row of docs/bad_inputs.md that needs no training run."""
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  unwritable = a_file / 'out'  # no folder can be made inside a file, root or not
  photo = REPO.parent / 'shared' / 'data' / 'real'
  deblur = ['-m', 'lmdvit_jax.deblur', f'--checkpoint={checkpoint}']
  evaluate = ['evaluate.py', f'--checkpoint={checkpoint}', '--data=synthetic?count=1&size=64']
  train = ['train.py', '--config=configs/tiny.py']
  cases = [
    ([*deblur, f'--output={tmp_path}/o', '--capacity=1.5', str(photo)], 'capacity'),
    ([*deblur, f'--output={tmp_path}/o'], 'at least one image file or folder'),
    ([*deblur, f'--output={unwritable}', str(photo)], 'not writable'),
    ([*evaluate, f'--output={tmp_path}/e', '--panel_height=0'], '--panel_height'),
    ([*evaluate, f'--output={unwritable}'], 'not writable'),
    (
      [*evaluate, f'--output={tmp_path}/e', '--max_memory=1K'],
      'max_memory (1.0 KiB) is less than the params',
    ),
    ([*train, f'--workdir={unwritable}'], '--workdir', 'not writable'),
    (
      ['train.py', '--config=configs/nope.py', f'--workdir={tmp_path}/t'],
      "No such file or directory: 'configs/nope.py'",
    ),
    (
      [*train, f'--workdir={tmp_path}/t', '--config.keep_checkpoints=0'],
      'keep_checkpoints must be at least 1',
    ),
  ]
  procs = run_commands([command for command, *_ in cases], env=_env())
  for proc, (command, *needles) in zip(procs, cases):
    prog = 'deblur.py' if command[0] == '-m' else command[0]
    _one_error_line(proc, prog, *needles)
  # A refused command makes no folder.
  assert not any((tmp_path / d).exists() for d in ('o', 'e', 't'))


def readme_commands() -> list[list[str]]:
  """The program part of every `python ...` command in the README's code blocks:
  ['train.py'] or ['-m', 'lmdvit_jax.deblur']."""
  text = (REPO / 'README.md').read_text()
  lines = [l.strip() for l in text.splitlines() if l.startswith('    ')]
  out = []
  for line in lines:
    for match in re.finditer(r'python (-m [\w.]+|[\w/]+\.py)', line):
      out.append(
        match.group(1).split(' ', 1) if match.group(1).startswith('-m') else [match.group(1)]
      )
  return out


def test_every_readme_command_is_an_entry_point_whose_help_is_tested():
  commands = readme_commands()
  assert ['demo.py'] in commands and ['-m', 'lmdvit_jax.deblur'] in commands
  for command in commands:
    if command == ['-m', 'pytest']:
      continue
    assert command in ENTRY_POINTS, command
  assert len((REPO / 'README.md').read_text().splitlines()) <= 250
