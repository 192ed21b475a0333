"""The AdaWPT stage in training mode: rematerialisation changes memory, not results."""

import jax
import jax.numpy as jnp
import numpy as np

from lmdvit_jax.models.adawpt import AdaWPTStage


def test_remat_gives_identical_gradients():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 16)), jnp.float32)
  stages = [
    AdaWPTStage(
      16, depth=3, num_heads=2, win_size=4, modulator=True, drop_path=(0.1, 0.1, 0.1), remat=r
    )
    for r in (False, True)
  ]
  params = stages[0].init(
    {'params': jax.random.PRNGKey(0), 'gumbel': jax.random.PRNGKey(1)}, x, train=False
  )['params']

  def loss(stage, p):
    rngs = {'gumbel': jax.random.PRNGKey(2), 'dropout': jax.random.PRNGKey(3)}
    y, scores, _, _ = stage.apply({'params': p}, x, train=True, rngs=rngs)
    return jnp.mean(y**2) + sum(jnp.mean(s) for s in scores)

  (l0, g0), (l1, g1) = [
    jax.jit(jax.value_and_grad(lambda p, s=s: loss(s, p)))(params) for s in stages
  ]
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(g0['block_2']['mlp']['linear2']['kernel'])).max() > 0


def _stage_grads(train_capacity, depth=4, drop_path=0.0, rest_only=False):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 16)), jnp.float32)
  stage = AdaWPTStage(
    16,
    depth=depth,
    num_heads=2,
    win_size=4,
    modulator=True,
    drop_path=(drop_path,) * depth,
    train_capacity=train_capacity,
  )
  params = stage.init(
    {'params': jax.random.PRNGKey(0), 'gumbel': jax.random.PRNGKey(1)}, x, train=False
  )['params']

  def loss(p):
    rngs = {'gumbel': jax.random.PRNGKey(2), 'dropout': jax.random.PRNGKey(3)}
    y, scores, decisions, dropped = stage.apply({'params': p}, x, train=True, rngs=rngs)
    # `rest_only`: no loss on the scores, so a predictor learns only through
    # its straight-through decisions (the blocks' outputs times the keep value).
    extra = 0.0 if rest_only else sum(jnp.mean(s) for s in scores)
    return jnp.mean(jnp.sin(y)) + extra, (y, decisions, dropped)

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def test_pruned_training_at_full_capacity_is_the_dense_step():
  (l0, (y0, d0, _)), g0 = _stage_grads('dense')
  (l1, (y1, d1, dropped)), g1 = _stage_grads(1.0)
  np.testing.assert_allclose(y0, y1, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(d0, d1):
    np.testing.assert_array_equal(a, b)
  assert all(int(np.sum(d)) == 0 for d in dropped)
  flat0 = jax.tree_util.tree_flatten_with_path(g0)[0]
  for (path, a), b in zip(flat0, jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_pruned_training_runs_a_share_of_windows_and_its_decisions_still_learn():
  (_, (y0, _, _)), _ = _stage_grads('dense', rest_only=True)
  (_, (y, decisions, dropped)), grads = _stage_grads(0.25, rest_only=True)
  kept = [float(np.mean(d)) for d in decisions]
  assert all(0.3 < k < 0.7 for k in kept), kept  # Gumbel decisions of fresh predictors: ~half
  # More kept than the capacity holds: the overflow is dropped and counted, not computed.
  assert all(int(np.sum(d)) > 0 for d in dropped)
  assert not np.allclose(y, y0)
  # Through the straight-through decisions of the gathered windows alone, the
  # predictors (both parities) and the blocks get gradients.
  for name in ('predictor_0', 'predictor_1', 'block_0', 'block_3'):
    leaves = jax.tree_util.tree_leaves(grads[name])
    assert max(float(np.abs(g).max()) for g in leaves) > 0, name
