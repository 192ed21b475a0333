"""The AdaWPT stage in training mode: rematerialisation changes memory, not results."""

import jax
import jax.numpy as jnp
import numpy as np

from lmdvit_jax.models.adawpt import AdaWPTStage


def test_remat_gives_identical_gradients():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 16)), jnp.float32)
  stages = [AdaWPTStage(16, depth=3, num_heads=2, win_size=4, modulator=True,
                        drop_path=(0.1, 0.1, 0.1), remat=r) for r in (False, True)]
  params = stages[0].init({'params': jax.random.PRNGKey(0), 'gumbel': jax.random.PRNGKey(1)},
                          x, train=False)['params']

  def loss(stage, p):
    rngs = {'gumbel': jax.random.PRNGKey(2), 'dropout': jax.random.PRNGKey(3)}
    y, scores, _, _ = stage.apply({'params': p}, x, train=True, rngs=rngs)
    return jnp.mean(y**2) + sum(jnp.mean(s) for s in scores)

  (l0, g0), (l1, g1) = [jax.jit(jax.value_and_grad(lambda p, s=s: loss(s, p)))(params)
                        for s in stages]
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(g0['block_2']['mlp']['linear2']['kernel'])).max() > 0
