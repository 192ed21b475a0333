"""Every program that matters lowers for GPU and TPU, checked on this CPU with
`jax.export`: the train step as train.py builds it, and pruned inference."""

import jax
import jax.numpy as jnp
import pytest

from configs import lmdvit as lmdvit_config
from lmdvit_jax import config_checks, export, inference, train_lib
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import LMDViT, init_params
from tests.helpers import small_config

ACCELERATORS = ('cuda', 'tpu')


def highest_share(text: str) -> float:
  """Share of the program's matmuls and convolutions that ask for HIGHEST precision."""
  ops = [
    l for l in text.splitlines() if 'stablehlo.dot_general' in l or 'stablehlo.convolution' in l
  ]
  return sum('HIGHEST' in l for l in ops) / max(len(ops), 1)


def _lowered_train_step(**changes):
  config = small_config()
  config.update(changes)
  mesh = train_lib.make_mesh()
  model = train_lib.build_model(config)
  tx = train_lib.make_optimizer(config)
  state = train_lib.init_train_state(model, tx, config, mesh)
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state
  )
  sharding, b, p = train_lib.batch_sharding(mesh), config.batch_size, config.patch_size
  batch = {
    k: jax.ShapeDtypeStruct((b, p, p, c), jnp.float32, sharding=sharding)
    for k, c in (('blur', 3), ('sharp', 3), ('mask', 1))
  }
  step = train_lib.make_train_step(model, tx, config, mesh)
  return export.lower(step, abstract, batch, platforms=ACCELERATORS)


@pytest.mark.parametrize(
  'dtype,remat,capacity,precision',
  [
    ('float32', 'none', 'dense', 'highest'),
    ('bfloat16', 'blocks', 'dense', 'default'),
    ('float32', 'blocks', 0.25, 'default'),
    ('bfloat16', 'none', 0.5, 'highest'),
  ],
)
def test_train_step_lowers_for_gpu_and_tpu(dtype, remat, capacity, precision):
  """Each dtype with each remat setting, dense and pruned, at either matmul precision."""
  exported = _lowered_train_step(
    compute_dtype=dtype, remat=remat, train_capacity=capacity, matmul_precision=precision
  )
  assert exported.platforms == ACCELERATORS
  text = exported.mlir_module()
  assert 'tf.aliasing_output' in text  # the state is donated, as train.py runs it
  assert ('bf16' in text) == (dtype == 'bfloat16')
  # Pruned training ranks windows to gather them; the dense step ranks nothing.
  assert ('stablehlo.sort' in text) == (capacity != 'dense')
  assert highest_share(text) == (1 if precision == 'highest' else 0)


def test_an_unknown_matmul_precision_is_refused():
  config = small_config()
  config.matmul_precision = 'fp64'
  with pytest.raises(ValueError, match='matmul_precision must be one of'):
    config_checks.check_run_config(config)


@pytest.fixture(scope='module')
def released():
  kwargs = dict(lmdvit_config.get_model_config())
  kwargs.pop('drop_path_rate')
  return kwargs, init_params(LMDViT(**kwargs), 0)


@pytest.mark.parametrize('mode', ['exact', 'budget', 'dense'])
def test_pruned_inference_of_the_released_model_lowers_for_gpu_and_tpu(released, mode):
  kwargs, params = released
  if mode == 'dense':
    kwargs = dict(kwargs, prune_loc=(0,) * 9)
  capacity = {'exact': 'exact', 'budget': 0.25, 'dense': 1.0}[mode]
  deblurrer = inference.Deblurrer(
    LMDViT(**kwargs, capacity=capacity),
    params,
    InferenceSettings(tile=0, matmul_precision='highest'),
    warmup=False,
  )
  exported = export.export(deblurrer, 200, 250, platforms=('cpu',) + ACCELERATORS)
  assert exported.platforms == ('cpu',) + ACCELERATORS
  text = exported.mlir_module()
  assert highest_share(text) == 1
  assert ('stablehlo.while' in text) == (mode == 'exact')  # the chunk loop of exact mode


def test_a_lowering_failure_names_the_platform_and_the_op():
  with pytest.raises(export.LoweringError, match='lowering for cuda failed: custom call .*eig'):
    export.lower(
      lambda x: jnp.linalg.eig(x)[0],
      jax.ShapeDtypeStruct((4, 4), jnp.float32),
      platforms=('cpu', 'cuda'),
    )
