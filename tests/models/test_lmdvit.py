"""The network: parameter counts, parity with the official model, batches, training mode."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lmdvit as lmdvit_config
from configs import lmdvit_small, tiny
from lmdvit_jax import convert
from lmdvit_jax.models import LMDViT, count_params, fan_in_predictors, identity_output, init_params
from tests.helpers import fixture_names


def abstract_params(model, side=128):
  return jax.eval_shape(
    lambda x: model.init(jax.random.PRNGKey(0), x),
    jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32),
  )['params']


@pytest.mark.parametrize(
  'config, expected',
  [
    (lmdvit_config, 54_549_163),  # the official count of the released model
    (lmdvit_small, 13_945_471),
  ],
)
def test_param_counts(config, expected):
  assert count_params(abstract_params(LMDViT(**config.get_config().model))) == expected


def test_released_config_runs_128():
  model = LMDViT(**lmdvit_config.get_config().model, capacity='masked')
  params = init_params(model, 0)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 128, 128, 3)), jnp.float32)
  out = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, x)
  assert out.restored.shape == (1, 128, 128, 3) and out.gate.shape == (1, 128, 128, 1)
  assert np.all(np.isfinite(out.restored))
  assert np.all(np.asarray(out.gate) >= 0.1)
  # Every stage prunes: 1 + 2 + 2 + 2 + 2 + 2 + 2 + 2 + 1 predictors.
  assert len(out.scores) == len(out.decisions) == 16
  assert out.scores[0].shape == (1, 128, 128, 2) and out.decisions[0].shape == (1, 16, 16)
  assert out.scores[7].shape == (1, 8, 8, 2) and out.decisions[7].shape == (1, 1, 1)


def load_fixture(reference, name):
  meta = json.loads((reference / f'{name}_meta.json').read_text())
  with np.load(reference / f'{name}_weights.npz') as z:
    sd = {k: z[k] for k in z.files}
  with np.load(reference / f'{name}_io.npz') as z:
    io = {k: z[k] for k in z.files}
  return meta, sd, io


def assert_matches_fixture(out, io):
  np.testing.assert_allclose(out.restored, io['restored'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.gate, io['gate'], atol=1e-4, rtol=0)
  n = len([k for k in io if k.startswith('decisions_')])
  assert len(out.decisions) == len(out.scores) == n
  for i in range(n):
    np.testing.assert_array_equal(
      np.asarray(out.decisions[i]), io[f'decisions_{i:02d}'], err_msg=f'decision map {i}'
    )
    # The bound grows with the logits' range: in fixture A they reach |137|, and
    # the official float32 model is itself up to 1.1e-4 away from a float64
    # evaluation of the same network (float32 rounding, not a mapping error).
    ref = io[f'scores_{i:02d}']
    np.testing.assert_allclose(
      out.scores[i], ref, rtol=0, atol=1e-4 + 1e-6 * np.abs(ref).max(), err_msg=f'scores {i}'
    )


_APPLY = {}


def fixture_apply(sd, capacity, chunks=None):
  """One jitted apply per (weights layout, capacity): tests share compilations."""
  kwargs = convert.model_kwargs_from_torch(sd)
  extra = {} if chunks is None else {'capacity_chunks': chunks}
  model = LMDViT(**kwargs, capacity=capacity, **extra)
  if model not in _APPLY:
    _APPLY[model] = jax.jit(lambda p, x: model.apply({'params': p}, x))
  return _APPLY[model]


@pytest.mark.parametrize('name', fixture_names())
@pytest.mark.parametrize('capacity', ['masked', 'exact'])
def test_parity_with_official_model(reference, name, capacity):
  meta, sd, io = load_fixture(reference, name)
  kwargs = convert.model_kwargs_from_torch(sd)
  for k, v in meta['model'].items():  # the converter reads the config off the weights
    assert kwargs[k] == v, k
  params = convert.params_from_torch(sd)
  assert count_params(params) == meta['n_params']
  with jax.default_matmul_precision('highest'):
    out = fixture_apply(sd, capacity)(params, io['input'])
  assert_matches_fixture(out, io)


def test_batch_equals_images_one_by_one(reference):
  """Batches work (the official model cannot), also with per-image kept counts."""
  _, sd, io = load_fixture(reference, fixture_names()[0])
  params = convert.params_from_torch(sd)
  a = io['input']
  b = np.ascontiguousarray(a[:, ::-1, ::-1]) * 0.8  # another image, other decisions
  with jax.default_matmul_precision('highest'):
    singles = [fixture_apply(sd, 'masked')(params, x) for x in (a, b)]
    for capacity, chunks in (('masked', None), ('exact', 3)):
      both = fixture_apply(sd, capacity, chunks)(params, np.concatenate([a, b]))
      for i, single in enumerate(singles):
        np.testing.assert_allclose(both.restored[i], single.restored[0], atol=1e-5)
        np.testing.assert_allclose(both.gate[i], single.gate[0], atol=1e-5)
        for d_both, d_single in zip(both.decisions, single.decisions):
          np.testing.assert_array_equal(d_both[i], d_single[0])
  kept = [[float(np.asarray(d).sum()) for d in s.decisions] for s in singles]
  assert kept[0] != kept[1], 'the two images should keep different window counts'


@pytest.fixture(scope='module')
def tiny_model_and_params():
  model = LMDViT(**tiny.get_config().model)
  return model, init_params(model, 1)


def test_train_mode_gradients_reach_predictors(tiny_model_and_params):
  model, params = tiny_model_and_params
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, 128, 128, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(size=(2, 128, 128, 3)), jnp.float32)

  def loss(p, key):
    k1, k2 = jax.random.split(key)
    out = model.apply({'params': p}, x, train=True, rngs={'gumbel': k1, 'dropout': k2})
    return jnp.mean(jnp.abs(out.restored - y)), out

  @jax.jit
  def run(p):
    (value, out), grads = jax.value_and_grad(loss, has_aux=True)(p, jax.random.PRNGKey(0))
    return value, out, grads, loss(p, jax.random.PRNGKey(1))[1]

  value, out, grads, out2 = run(params)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  # The reconstruction loss reaches each predictor only through the
  # straight-through Gumbel decisions.
  for stage in ('encoder_0', 'decoder_2', 'bottleneck'):
    g = grads[stage]['predictor_0']['out_linear3']['kernel']
    assert np.abs(np.asarray(g)).max() > 0, stage
  for d in out.decisions:
    assert set(np.unique(np.asarray(d))) <= {0.0, 1.0}
  # Gumbel noise makes training decisions depend on the key.
  assert any(not np.array_equal(a, b) for a, b in zip(out.decisions, out2.decisions))


def test_unpruned_stages_have_no_predictor():
  kwargs = dict(tiny.get_config().model)
  kwargs['prune_loc'] = (0, 1, 0, 0, 0, 0, 0, 1, 0)
  model = LMDViT(**kwargs)
  params = abstract_params(model)
  assert 'predictor_0' not in params['encoder_0'] and 'predictor_1' in params['encoder_1']
  out = jax.eval_shape(
    lambda p, x: model.apply({'params': p}, x),
    params,
    jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32),
  )
  assert len(out.decisions) == 2 + 2  # encoder_1 (depth 2), decoder_2 (depth 3: two predict)


@pytest.mark.parametrize(
  'shape, dtype, message',
  [
    ((1, 128, 128), jnp.float32, r'\[B, H, W, 3\]'),
    ((1, 128, 128, 4), jnp.float32, r'\[B, H, W, 3\]'),
    ((1, 100, 128, 3), jnp.float32, 'multiples of 16 \\* win_size = 128'),
    ((1, 128, 128, 3), jnp.uint8, 'float images'),
  ],
)
def test_bad_inputs_fail_clearly(shape, dtype, message):
  model = LMDViT(**tiny.get_config().model)
  with pytest.raises((ValueError, TypeError), match=message):
    jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct(shape, dtype)
    )


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('depths', (1, 2, 3), 'needs 9 entries'),
    ('num_heads', (1, 2, 3, 4, 5, 6, 7, 8, 9), 'not divisible'),
    ('capacity', 'fast', "capacity must be 'exact'"),
    ('capacity', 1.5, r'in \(0, 1\]'),
    ('capacity_chunks', 0, 'capacity_chunks must be a positive integer'),
    ('capacity_chunks', 2.5, 'capacity_chunks must be a positive integer'),
  ],
)
def test_bad_config_fails_clearly(field, value, message):
  kwargs = dict(tiny.get_config().model)
  kwargs[field] = value
  with pytest.raises(ValueError, match=message):
    abstract_params(LMDViT(**kwargs))


def test_init_params_matches_flax_init_structure():
  model = LMDViT(**tiny.get_config().model)
  a = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), abstract_params(model))
  p = init_params(model, 3)
  assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), p) == a
  q = init_params(model, 3)
  assert all(
    np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q))
  )
  kernel = np.asarray(init_params(LMDViT(), 0)['decoder_0']['block_0']['mlp']['linear1']['kernel'])
  assert abs(kernel.std() - 0.02) < 0.001 and np.abs(kernel).max() <= 0.04 / 0.8796 + 1e-6


def test_identity_start_and_fan_in_predictors(tiny_model_and_params):
  """Training-from-scratch inits: the identity start returns the input exactly;
  fan-in predictors change only predictor kernels and give order-one logits
  (the official 0.02 init gives logits near 1e-6)."""
  model, params = tiny_model_and_params
  model = model.clone(capacity='masked')  # one cheap compile
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(1, 128, 128, 3)), jnp.float32)
  apply = jax.jit(lambda p: model.apply({'params': p}, x))
  ident = identity_output(params)
  np.testing.assert_array_equal(apply(ident).restored, x)
  assert np.abs(np.asarray(params['output_proj']['kernel'])).max() > 0  # input untouched

  scaled = fan_in_predictors(params, 0)
  paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]
  changed = [
    p
    for p, a, b in zip(paths, jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(scaled))
    if not np.array_equal(a, b)
  ]
  assert changed and all('predictor_' in c and 'kernel' in c for c in changed)
  official = np.abs(np.asarray(apply(params).scores[0])).mean()
  fan_in = np.abs(np.asarray(apply(scaled).scores[0])).mean()
  assert official < 1e-3 < 0.05 < fan_in
