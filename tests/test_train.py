"""train.py end to end: train, checkpoint, evaluate, get killed, resume exactly."""

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lmdvit_jax import checkpointing
from tests.helpers import REPO, run_commands, subprocess_env

NUM_STEPS = 6  # small_config: checkpoints every 2 steps (keeps 2), logs every 2, evals every 3.
LOG_EVERY = 2
# One worker runs this module (pytest-xdist, --dist loadscope), so the
# `uninterrupted` run is made once; being the longest, it starts first.
pytestmark = pytest.mark.schedule_first

CONFIG_FILE = '''
from tests.helpers import small_config


def get_config():
  return small_config()
'''


def _train(workdir, config_file, *overrides, wait=True):
  cmd = [
    sys.executable,
    str(REPO / 'train.py'),
    f'--config={config_file}',
    f'--workdir={workdir}',
    *overrides,
  ]
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  if wait:
    output, _ = proc.communicate(timeout=900)
    return proc.returncode, output
  return proc


def _read_jsonl(path):
  return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _checkpoint_arrays(workdir, step):
  """params, opt_state and meta of a step, flattened, as numpy."""
  import jax
  import orbax.checkpoint as ocp

  out = {}
  with ocp.CheckpointManager(
    Path(workdir).absolute() / 'checkpoints', item_names=('params', 'opt_state', 'meta')
  ) as mngr:
    restored = mngr.restore(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(),
        opt_state=ocp.args.StandardRestore(),
        meta=ocp.args.StandardRestore(),
      ),
    )
  for item in ('params', 'opt_state', 'meta'):
    for k, v in jax.tree_util.tree_flatten_with_path(restored[item])[0]:
      out[item + jax.tree_util.keystr(k)] = np.asarray(v)
  return out


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('config') / 'small.py'
  path.write_text(CONFIG_FILE)
  return path


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, config_file):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  code, output = _train(workdir, config_file)
  assert code == 0, output[-5000:]
  return workdir


def test_run_writes_metrics_checkpoints_and_best(uninterrupted):
  w = uninterrupted
  rows = _read_jsonl(w / 'metrics.jsonl')
  assert [r['step'] for r in rows] == [2, 4, 6]
  for r in rows:
    assert np.isfinite(r['loss']) and r['skipped'] == 0
    assert 0 < r['lr'] <= 1e-3
    assert {'l1', 'ssim', 'fft', 'prune', 'grad_norm', 'kept/mean', 'kept/08'} <= set(r)
  assert 'steps_per_sec' in rows[-1]
  # Latest 2 steps are kept; each holds the params the evaluators read.
  assert sorted(int(p.name) for p in (w / 'checkpoints').iterdir()) == [4, 6]
  kwargs, params = checkpointing.load_model(w)
  assert kwargs['win_size'] == 4 and kwargs['depths'] == [1] * 9 and 'dtype' not in kwargs
  assert 'input_proj' in params
  evals = _read_jsonl(w / 'eval.jsonl')
  assert [e['step'] for e in evals] == [3, 6]
  assert all(np.isfinite(e['eval/psnr']) for e in evals)
  best = checkpointing.read_best(w)
  assert best['step'] in (3, 6)
  assert best['wpsnr'] == max(e['eval/wpsnr'] for e in evals)
  best_kwargs, _ = checkpointing.load_model(w / 'best')
  assert best_kwargs == kwargs
  assert list((w / 'tensorboard').glob('events.out.tfevents.*'))


def test_a_stop_signal_a_kill_and_a_damaged_step_lose_nothing_and_the_run_ends_as_if_uninterrupted(
  tmp_path, config_file, uninterrupted
):
  """Three runs of one workdir. SIGTERM while step 1 runs: step 1 is saved and
  the run exits 0. The rerun continues from it and is killed (SIGKILL) once it
  has saved step 4, leaving a damaged step 6 (as a kill while writing it
  would) and best/ from before. The third sets step 6 aside, resumes from step
  4, evaluates, and ends with the uninterrupted run's weights, optimizer state
  and loss."""
  import shutil

  from tests.test_checkpointing import _damage

  # Evaluation does not touch the training state: switch it off (and check overrides work).
  no_eval = '--config.eval_every_steps=0'
  # Only the signal saves: periodic checkpoints and the end lie far past it.
  args = (no_eval, '--config.checkpoint_every_steps=1000', '--config.num_train_steps=1000')
  proc = _train(tmp_path, config_file, *args, wait=False)
  output = _signal_once_training_starts(proc, signal.SIGTERM)
  assert proc.returncode == 0, output[-5000:]
  assert 'Stopped by SIGTERM after step 1, checkpoint saved' in output, output[-3000:]
  assert 'Traceback' not in output
  assert checkpointing.latest_step(tmp_path) == 1

  proc = _train(tmp_path, config_file, no_eval, wait=False)  # checkpoints every 2 steps
  deadline = time.time() + 900
  try:
    while not (tmp_path / 'checkpoints' / '4').is_dir():
      assert proc.poll() is None, proc.stdout.read()[-5000:]
      assert time.time() < deadline
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  assert 'Resumed from step 1' in output, output[-3000:]
  killed_at = checkpointing.latest_step(tmp_path)
  assert killed_at is not None and killed_at < NUM_STEPS, 'the run finished before the kill'
  shutil.copytree(
    uninterrupted / 'checkpoints' / str(NUM_STEPS), tmp_path / 'checkpoints' / str(NUM_STEPS)
  )
  _damage(tmp_path / 'checkpoints' / str(NUM_STEPS), 'truncate')
  shutil.copytree(uninterrupted / 'best', tmp_path / 'best')

  code, output = _train(tmp_path, config_file)  # evaluates at step 6
  assert code == 0, output[-5000:]
  assert f'Resumed from step {killed_at}' in output and 'Set the damaged checkpoint aside' in output
  assert 'Event loop is closed' not in output and 'Traceback' not in output
  assert (tmp_path / 'checkpoints' / f'{NUM_STEPS}.damaged').is_dir()
  assert checkpointing.latest_step(tmp_path) == NUM_STEPS
  resumed = _checkpoint_arrays(tmp_path, NUM_STEPS)
  reference = _checkpoint_arrays(uninterrupted, NUM_STEPS)
  assert set(resumed) == set(reference)
  assert int(resumed['meta[\'step\']']) == NUM_STEPS
  for k in reference:
    np.testing.assert_allclose(resumed[k], reference[k], rtol=0, atol=1e-6, err_msg=k)
  loss = lambda w: {r['step']: r['loss'] for r in _read_jsonl(w / 'metrics.jsonl')}
  assert loss(tmp_path)[NUM_STEPS] == pytest.approx(loss(uninterrupted)[NUM_STEPS], abs=1e-6)
  # One row per logged step (the stop logs its step): rows written after the
  # checkpoint a run resumes from are not repeated.
  assert [r['step'] for r in _read_jsonl(tmp_path / 'metrics.jsonl')] == [1, 2, 4, 6]
  evals = _read_jsonl(tmp_path / 'eval.jsonl')
  assert [e['step'] for e in evals] == [NUM_STEPS]
  reference_eval = _read_jsonl(uninterrupted / 'eval.jsonl')[-1]
  assert evals[0]['eval/wpsnr'] == pytest.approx(reference_eval['eval/wpsnr'], abs=1e-3)
  assert checkpointing.read_best(tmp_path)['wpsnr'] >= evals[0]['eval/wpsnr']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _two_processes(workdir, config_file, *overrides):
  """train.py as two local processes of one job (coordinator on 127.0.0.1)."""
  port = _free_port()
  return [
    subprocess.Popen(
      [
        sys.executable,
        str(REPO / 'train.py'),
        f'--config={config_file}',
        f'--workdir={workdir}',
        *overrides,
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=subprocess_env(
        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)
      ),
    )
    for i in range(2)
  ]


CONFIG_MISTAKES = {
  '--config.optim.lrr=1e-3': 'Did you mean "lr"',
  '--config.patch_size=100': 'patch_size=100 is not a multiple of 16 * win_size = 64',
  '--config.data.sources=("synthetc",)': "Unknown data kind 'synthetc'",
  '--config.compute_dtype=float16': 'compute_dtype must be one of',
}


@pytest.fixture(scope='module')
def config_mistakes(tmp_path_factory, config_file):
  """`train.py` with each mistake, all in one interpreter (tests/entry_points.py)."""
  root = tmp_path_factory.mktemp('mistakes')
  commands = [
    ['train.py', f'--config={config_file}', f'--workdir={root / str(i)}', override]
    for i, override in enumerate(CONFIG_MISTAKES)
  ]
  procs = run_commands(commands, env=subprocess_env())
  return {
    override: (proc, root / str(i))
    for i, (override, proc) in enumerate(zip(CONFIG_MISTAKES, procs))
  }


@pytest.mark.parametrize('override', CONFIG_MISTAKES)
def test_config_mistakes_fail_in_one_line_before_any_work(config_mistakes, override):
  proc, workdir = config_mistakes[override]
  output = proc.stdout + proc.stderr
  assert proc.returncode == 2, output[-3000:]
  errors = [l for l in output.splitlines() if 'error:' in l]
  assert len(errors) == 1 and errors[0].startswith('train.py: error:'), output
  assert CONFIG_MISTAKES[override] in errors[0], output
  assert 'Traceback' not in output
  assert not workdir.exists()


# ---------------------------------------------------------------------------
# Preemption: SIGTERM between periodic checkpoints loses nothing.


def _signal_once_training_starts(proc, signum):
  """Sends `signum` once the progress bar of the run's loop appears (the stop
  handler is in place by then, and step 1 is still being compiled: it is the
  step in flight); returns the whole output."""
  seen, fd = b'', proc.stdout.fileno()
  while b'/1000 [' not in seen:  # the bar's first line: "0/1000 [00:00<?, ?step/s]"
    chunk = os.read(fd, 4096)  # the bar ends in no newline: read what is there
    assert chunk, seen.decode(errors='replace')[-5000:]
    seen += chunk
  proc.send_signal(signum)
  out, _ = proc.communicate(timeout=600)
  return seen.decode(errors='replace') + out


def test_ctrl_c_during_training_saves_the_step_in_flight(tmp_path, monkeypatch, caplog):
  """SIGINT takes the way SIGTERM does (the test above sends SIGTERM to
  train.py): here it reaches this process while step 1 is dispatched."""
  from lmdvit_jax import train_lib, training
  from tests.helpers import small_config

  real = train_lib.make_train_step

  def make_interrupted_step(*args):
    step = real(*args)

    def first_interrupted(state, batch):
      if not calls:
        os.kill(os.getpid(), signal.SIGINT)
      calls.append(1)
      return step(state, batch)

    return first_interrupted

  calls = []
  monkeypatch.setattr(train_lib, 'make_train_step', make_interrupted_step)
  config = small_config()
  config.update(num_train_steps=1000, checkpoint_every_steps=1000, eval_every_steps=0)
  before = signal.getsignal(signal.SIGINT)
  training.train_and_evaluate(config, tmp_path)  # returns: no KeyboardInterrupt
  assert len(calls) == 1
  assert 'Stopped by SIGINT after step 1, checkpoint saved' in caplog.text
  assert checkpointing.latest_step(tmp_path) == 1
  assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_two_processes_resume_train_like_one_and_agree_on_a_preemption(
  tmp_path, config_file, uninterrupted
):
  """The one-process run stopped after step 4, continued by two local
  processes of one job (coordinator on 127.0.0.1, the same global batch of 4):
  both restore step 4 and train like one process (the same losses, weights
  and evaluation). Then SIGTERM to one process: JAX's preemption service tells
  the other, both save the same step and exit 0.

  One pair of processes, not two: on CPU, JAX's compilation cache never
  serves process 1 (its cache key holds its own devices, and only process 0
  writes), so every pair compiles the train step afresh."""
  import shutil

  import jax

  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  shutil.rmtree(workdir / 'checkpoints' / str(NUM_STEPS))
  shutil.rmtree(workdir / 'best')  # step 6's evaluation writes it again, from two processes
  for name in ('metrics.jsonl', 'eval.jsonl'):  # the rows up to step 4
    rows = [r for r in _read_jsonl(workdir / name) if r['step'] <= 4]
    (workdir / name).write_text(''.join(json.dumps(r) + '\n' for r in rows))
  # Past step 6 the run keeps going until the signal; every checkpoint stays.
  args = ('--config.num_train_steps=1000', '--config.keep_checkpoints=1000')
  procs = _two_processes(workdir, config_file, *args)
  try:
    deadline = time.time() + 900
    # Process 0 writes the rows; a row may be read half written.
    while f'{{"step": {NUM_STEPS},' not in (workdir / 'metrics.jsonl').read_text():
      if any(p.poll() is not None for p in procs) or time.time() > deadline:
        for p in procs:  # one process failed: the other would wait for it
          p.kill()
        break
      time.sleep(0.1)
    else:
      procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
    assert 'Resumed from step 4' in out, out[-3000:]
  assert '2 devices (2 processes)' in outputs[0]  # auto-detected from the environment
  stopped = checkpointing.latest_step(workdir)
  assert stopped is not None and NUM_STEPS <= stopped < 1000
  for out in outputs:
    assert f'after step {stopped}, checkpoint saved' in out, out[-3000:]

  loss = lambda w: {r['step']: r['loss'] for r in _read_jsonl(w / 'metrics.jsonl')}
  two, one = loss(workdir), loss(uninterrupted)
  assert two[NUM_STEPS] == pytest.approx(one[NUM_STEPS], rel=1e-5)  # steps 5 and 6, run by two
  _, both = checkpointing.load_model(workdir, NUM_STEPS)  # saved by two, read by one
  _, reference = checkpointing.load_model(uninterrupted, NUM_STEPS)
  for (path, a), b in zip(
    jax.tree_util.tree_flatten_with_path(both)[0], jax.tree_util.tree_leaves(reference)
  ):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  evals = {e['step']: e['eval/wpsnr'] for e in _read_jsonl(workdir / 'eval.jsonl')}
  reference_evals = {e['step']: e['eval/wpsnr'] for e in _read_jsonl(uninterrupted / 'eval.jsonl')}
  assert sorted(evals)[:2] == [3, NUM_STEPS]
  assert evals[NUM_STEPS] == pytest.approx(reference_evals[NUM_STEPS], abs=1e-3)
  assert checkpointing.read_best(workdir)['step'] == NUM_STEPS


def test_steps_are_issued_while_the_previous_step_still_runs(tmp_path, monkeypatch):
  """Between logging and checkpoint steps the loop never waits on the devices:
  each step is dispatched before the one before it has finished (a trace of
  `is_ready` at dispatch), its batch already placed."""
  import jax
  import jax.numpy as jnp

  from lmdvit_jax import train_lib, training
  from tests.helpers import small_config

  real = train_lib.make_train_step
  trace = []  # (step about to be dispatched, was the previous step finished?)

  def make_slow_step(model, tx, config, mesh):
    step = real(model, tx, config, mesh)

    def slow(state, batch):
      state, metrics = step(state, batch)
      # A quarter second of device work that the metrics depend on.
      x = jnp.full((384, 384), 1e-3) * state.step
      x = jax.lax.fori_loop(0, 150, lambda _, y: jnp.tanh(y @ y), x)
      return state, {**metrics, 'burn': jnp.mean(x)}

    slow = jax.jit(slow, donate_argnums=0)
    previous = []

    def traced(state, batch):
      if previous:
        trace.append((len(previous) + 1, previous[-1].is_ready()))
      state, metrics = slow(state, batch)
      previous.append(metrics['burn'])
      return state, metrics

    return traced

  monkeypatch.setattr(train_lib, 'make_train_step', make_slow_step)
  config = small_config()
  config.update(
    num_train_steps=10, log_every_steps=5, checkpoint_every_steps=100, eval_every_steps=0
  )
  training.train_and_evaluate(config, tmp_path)
  # Step 2 follows the compiling first step, step 6 a logging step: both wait.
  free = [ready for step, ready in trace if step not in (2, 6)]
  assert len(free) == 7 and not any(free), trace


def test_a_second_job_is_refused_by_every_process_before_a_step(tmp_path, config_file):
  """A workdir in use (here held by another process): both processes of a new
  two-process job stop in one line, exit 2, before any step or file."""
  from tests.test_workdir_lock import _holder

  holder = _holder(tmp_path)
  try:
    procs = _two_processes(tmp_path, config_file)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    holder.kill()
    holder.wait(timeout=60)
  for p, out in zip(procs, outputs):
    assert p.returncode == 2, out[-3000:]
    errors = [l for l in out.splitlines() if 'error:' in l]
    assert len(errors) == 1 and 'is in use by' in errors[0], out[-3000:]
    assert 'Traceback' not in out
  assert f'process {holder.pid}' in outputs[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.lock']


def test_rows_of_a_run_killed_before_its_first_checkpoint_are_not_kept(tmp_path):
  """kill -9 before any checkpoint leaves rows and no checkpoint: the rerun
  starts at step 0 and logs each step once."""
  from lmdvit_jax import training
  from tests.helpers import small_config

  (tmp_path / 'metrics.jsonl').write_text('{"step": 2, "loss": 9.0}\n{"step": 4, "loss": 8.0}\n')
  (tmp_path / 'eval.jsonl').write_text('{"step": 3, "eval/psnr": 1.0}\n')
  config = small_config()
  config.update(num_train_steps=4, checkpoint_every_steps=100, eval_every_steps=0)
  training.train_and_evaluate(config, tmp_path)
  rows = _read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in rows] == [2, 4] and rows[0]['loss'] != 9.0
  assert _read_jsonl(tmp_path / 'eval.jsonl') == []


def test_pruned_training_trains_resumes_and_evaluates_like_the_dense_run(tmp_path):
  """`train_capacity=0.25`: checkpoints, evaluates, and a run resumed from its
  step 4 ends where the whole run did."""
  import shutil

  from lmdvit_jax import training
  from tests.helpers import small_config

  config = small_config()
  config.update(train_capacity=0.25, num_train_steps=6, eval_every_steps=4)
  last = training.train_and_evaluate(config, tmp_path / 'whole')
  assert np.isfinite(last['loss'])
  assert sorted(int(p.name) for p in (tmp_path / 'whole' / 'checkpoints').iterdir()) == [4, 6]
  evals = _read_jsonl(tmp_path / 'whole' / 'eval.jsonl')
  assert [e['step'] for e in evals] == [4, 6] and np.isfinite(evals[0]['eval/wpsnr'])
  # The same run stopped after step 4: its workdir as it was then, rows past 4 included.
  shutil.copytree(tmp_path / 'whole', tmp_path / 'split')
  shutil.rmtree(tmp_path / 'split' / 'checkpoints' / '6')
  training.train_and_evaluate(config, tmp_path / 'split')  # resumes from step 4
  split, ref = _checkpoint_arrays(tmp_path / 'split', 6), _checkpoint_arrays(tmp_path / 'whole', 6)
  for k in ref:
    np.testing.assert_allclose(split[k], ref[k], rtol=0, atol=1e-6, err_msg=k)
  rows = _read_jsonl(tmp_path / 'split' / 'metrics.jsonl')
  assert [r['step'] for r in rows] == [2, 4, 6]
