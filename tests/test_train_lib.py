"""The train step: learning, non-finite guard, multi-device equality, schedule.

Compilation dominates the run time on CPU, so one train step (of `small_config`)
is compiled per process and shared, compiled executables go to a persistent
cache that the subprocesses here and in test_train.py reuse, and the
four-device step compiles in a subprocess started first, in parallel with the
single-device work.
"""

import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmdvit_jax import config_checks, train_lib
from lmdvit_jax import mesh as mesh_lib
from lmdvit_jax.data import pipeline
from tests.helpers import REPO, small_config, subprocess_env

_FOUR_DEVICES = r'''
import sys
import jax
import numpy as np
from tests.helpers import small_config
from lmdvit_jax import train_lib

assert jax.device_count() == 4, jax.devices()
config = small_config()
mesh = train_lib.make_mesh()
model, tx = train_lib.build_model(config), train_lib.make_optimizer(config)
state = train_lib.init_train_state(model, tx, config, mesh)
batch = train_lib.put_batch(dict(np.load(sys.argv[1])), mesh)
assert {s.data.shape[0] for s in batch['blur'].addressable_shards} == {1}
state, metrics = train_lib.make_train_step(model, tx, config, mesh)(state, batch)
flat = {jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
np.savez(sys.argv[2], loss=np.asarray(metrics['loss']),
         grad_norm=np.asarray(metrics['grad_norm']), **flat)
'''


def _flat(tree):
  return {
    jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('train_lib')
  config = small_config()
  it = pipeline.make_train_iterator_from_config(config)
  host_batch = it.next_local()
  assert host_batch['mask'].sum() > 0
  np.savez(tmp / 'batch.npz', **host_batch)
  child = subprocess.Popen(
    [sys.executable, '-c', _FOUR_DEVICES, str(tmp / 'batch.npz'), str(tmp / 'four.npz')],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=subprocess_env(XLA_FLAGS='--xla_force_host_platform_device_count=4'),
  )
  mesh = train_lib.make_mesh()
  model, tx = train_lib.build_model(config), train_lib.make_optimizer(config)
  ns = types.SimpleNamespace(
    config=config,
    mesh=mesh,
    tmp=tmp,
    child=child,
    host_batch=host_batch,
    batch=train_lib.put_batch(host_batch, mesh),
    fresh=lambda: train_lib.init_train_state(model, tx, config, mesh),
    step=train_lib.make_train_step(model, tx, config, mesh),
  )
  yield ns
  if child.poll() is None:
    child.kill()


def test_one_step_on_four_devices_equals_one_device(setup):
  state, metrics = setup.step(setup.fresh(), setup.batch)
  output, _ = setup.child.communicate(timeout=900)
  assert setup.child.returncode == 0, output[-5000:]
  four = dict(np.load(setup.tmp / 'four.npz'))
  np.testing.assert_allclose(four.pop('loss'), metrics['loss'], rtol=0, atol=1e-5)
  np.testing.assert_allclose(four.pop('grad_norm'), metrics['grad_norm'], rtol=1e-5)
  one = _flat(state.params)
  assert set(one) == set(four)
  worst = max(float(np.max(np.abs(one[k] - four[k]))) for k in one)
  assert worst <= 1e-5, worst
  # The step moved the params (the comparison is not between two copies of the init).
  init = _flat(setup.fresh().params)
  assert max(float(np.max(np.abs(one[k] - init[k]))) for k in one) > 1e-4


def test_twenty_steps_on_a_fixed_batch_lower_the_loss(setup):
  state = setup.fresh()
  losses = []
  for _ in range(20):
    state, metrics = setup.step(state, setup.batch)
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert int(state.step) == 20 and int(state.skipped) == 0
  first, last = np.mean(losses[:3]), np.mean(losses[-3:])
  assert last < 0.97 * first, losses
  assert losses[-1] < losses[0], losses


def test_nan_batch_does_not_change_params(setup):
  state = setup.fresh()
  before = jax.device_get(state)
  bad = dict(setup.host_batch)
  bad['blur'] = bad['blur'].copy()
  bad['blur'][1, 3, 5, 0] = np.nan
  state, metrics = setup.step(state, train_lib.put_batch(bad, setup.mesh))
  assert not np.isfinite(float(metrics['loss']))
  assert float(metrics['finite']) == 0.0
  assert int(state.step) == 1 and int(state.skipped) == 1
  after = jax.device_get(state)
  for name in ('params', 'opt_state'):
    a, b = _flat(getattr(before, name)), _flat(getattr(after, name))
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f'{name}{k}')
  # A clean batch afterwards is applied: the guard does not latch.
  state, metrics = setup.step(state, setup.batch)
  assert float(metrics['finite']) == 1.0 and int(state.skipped) == 1
  assert any(
    np.any(a != b)
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(jax.device_get(state.params)))
  )


def test_schedule_warmup_cosine_and_restarts():
  config = small_config()
  config.optim.update(lr=1.0, end_lr=0.0, warmup_steps=4, restart_every=10)
  lr = train_lib.make_schedule(config)
  np.testing.assert_allclose([lr(s) for s in range(4)], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
  np.testing.assert_allclose(lr(4), 1.0, rtol=1e-6)
  np.testing.assert_allclose(lr(4 + 5), 0.5, atol=1e-6)  # half a cycle
  np.testing.assert_allclose(lr(4 + 10), 1.0, rtol=1e-6)  # restart
  np.testing.assert_allclose(lr(4 + 12), lr(4 + 2), rtol=1e-6)
  config.optim.update(restart_every=0, warmup_steps=0)
  config.num_train_steps = 100
  lr = train_lib.make_schedule(config)
  np.testing.assert_allclose([lr(0), lr(50), lr(100), lr(150)], [1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_optimizer_follows_the_config():
  config = small_config()
  config.optim.update(b1=0.8, b2=0.95, weight_decay=0.5)
  tx = train_lib.make_optimizer(config)
  hp = tx.init({'w': jnp.ones(2)}).hyperparams
  np.testing.assert_allclose([hp['b1'], hp['b2'], hp['weight_decay']], [0.8, 0.95, 0.5])


def test_bfloat16_compute_dtype_and_bad_names():
  config = small_config()
  config.compute_dtype = 'bfloat16'
  assert train_lib.build_model(config).dtype == jnp.bfloat16
  config.compute_dtype = 'fp16'
  with pytest.raises(ValueError, match='compute_dtype'):
    train_lib.build_model(config)


def test_summarize_averages_and_splits_blocks():
  steps = [
    {
      'loss': np.float32(1.0),
      'skipped': np.int32(0),
      'kept_fraction': np.array([0.5, 1.0], np.float32),
    },
    {
      'loss': np.float32(3.0),
      'skipped': np.int32(1),
      'kept_fraction': np.array([0.0, 1.0], np.float32),
    },
    {
      'loss': np.float32(np.nan),
      'skipped': np.int32(2),
      'kept_fraction': np.array([0.25, 1.0], np.float32),
    },
  ]
  out = train_lib.summarize(steps)
  assert out['loss'] == 2.0 and out['skipped'] == 2.0
  np.testing.assert_allclose([out['kept/00'], out['kept/01'], out['kept/mean']], [0.25, 1.0, 0.625])


def test_check_params_match_names_the_difference():
  config = small_config()
  model = train_lib.build_model(config)
  params = train_lib.init_params(model, 0)
  train_lib.check_params_match(params, train_lib.abstract_params(model))
  params['input_proj']['kernel'] = np.zeros((3, 3, 3, 4), np.float32)
  with pytest.raises(ValueError, match='input_proj'):
    train_lib.check_params_match(params, train_lib.abstract_params(model))


def test_scale_updates_touches_predictors_and_the_rest_apart():
  updates = {
    'encoder_0': {
      'predictor_0': {'in_linear1': {'kernel': jnp.ones((2, 2))}},
      'block_0': {'attn': {'kernel': jnp.ones((2, 2))}},
    },
    'input_proj': {'kernel': jnp.ones((3,))},
  }
  scaled = train_lib.scale_updates(updates, 10.0)
  np.testing.assert_array_equal(scaled['encoder_0']['predictor_0']['in_linear1']['kernel'], 10.0)
  np.testing.assert_array_equal(scaled['encoder_0']['block_0']['attn']['kernel'], 1.0)
  np.testing.assert_array_equal(scaled['input_proj']['kernel'], 1.0)
  assert train_lib.scale_updates(updates, 1.0) is updates
  frozen = train_lib.scale_updates(updates, 1.0, rest=0.0)
  np.testing.assert_array_equal(frozen['encoder_0']['predictor_0']['in_linear1']['kernel'], 1.0)
  np.testing.assert_array_equal(frozen['encoder_0']['block_0']['attn']['kernel'], 0.0)


def test_predictors_only_training_leaves_the_rest_bit_identical(setup):
  config = setup.config.copy_and_resolve_references()
  config.optim.trainable = 'predictors'
  config_checks.check_run_config(config)
  model, tx = train_lib.build_model(config), train_lib.make_optimizer(config)
  step = train_lib.make_train_step(model, tx, config, setup.mesh)
  state = train_lib.init_train_state(model, tx, config, setup.mesh)
  before = _flat(jax.device_get(state.params))
  for _ in range(2):
    state, metrics = step(state, setup.batch)
  assert float(metrics['finite']) == 1.0
  after = _flat(jax.device_get(state.params))
  moved = {k for k in before if np.any(before[k] != after[k])}
  predictors = {k for k in before if 'predictor_' in k}
  assert predictors and moved == predictors, sorted(moved ^ predictors)[:5]
  config.optim.trainable = 'predictor'
  with pytest.raises(ValueError, match='optim.trainable'):
    config_checks.check_run_config(config)


_CLUSTER_VARS = (
  'JAX_COORDINATOR_ADDRESS',
  'JAX_NUM_PROCESSES',
  'JAX_PROCESS_ID',
  'SLURM_JOB_ID',
  'SLURM_STEP_NODELIST',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
  'OMPI_MCA_orte_hnp_uri',
  'OMPI_COMM_WORLD_SIZE',
)


@pytest.fixture
def no_cluster(monkeypatch):
  for var in _CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  return calls


def test_distributed_start_detects_the_environments_jax_knows(no_cluster, monkeypatch):
  from jax._src.clusters import ClusterEnv

  assert mesh_lib.detect_cluster() is None
  assert not mesh_lib.maybe_initialize_distributed() and not no_cluster

  # SLURM, through JAX's own detector: one task is not a multi-process job.
  slurm = dict(
    SLURM_JOB_ID='7',
    SLURM_STEP_NODELIST='node1',
    SLURM_NTASKS='1',
    SLURM_PROCID='0',
    SLURM_LOCALID='0',
  )
  for k, v in slurm.items():
    monkeypatch.setenv(k, v)
  assert mesh_lib.detect_cluster() is None
  monkeypatch.setenv('SLURM_NTASKS', '4')
  assert mesh_lib.detect_cluster() == 'slurm'
  for k in slurm:
    monkeypatch.delenv(k)

  # Any environment JAX registers a detector for (a Cloud TPU pod slice here).
  class FakePodSlice:
    name, opt_in_only_method = 'fake_tpu_pod', False
    is_env_present = staticmethod(lambda: True)
    get_process_count = staticmethod(lambda: 4)

  monkeypatch.setattr(ClusterEnv, '_cluster_types', [FakePodSlice])
  assert mesh_lib.detect_cluster() == 'fake_tpu_pod'
  assert mesh_lib.maybe_initialize_distributed() and len(no_cluster) == 1
  assert not mesh_lib.maybe_initialize_distributed(force=False) and len(no_cluster) == 1

  # A coordinator address, with the process count and id from the environment.
  monkeypatch.setattr(ClusterEnv, '_cluster_types', [])
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '127.0.0.1:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  assert mesh_lib.detect_cluster() == 'coordinator address'
  assert mesh_lib.maybe_initialize_distributed()
  assert no_cluster[-1] == {'num_processes': 2, 'process_id': 1}
