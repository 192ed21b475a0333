"""Depthwise 3x3 reflect convolution of windows: both code paths against numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from lmdvit_jax.models import feedforward


def _numpy_reference(x, kernel, bias):
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  h, w = x.shape[1:3]
  out = np.broadcast_to(bias, x.shape).astype(np.float64)
  for i in range(3):
    for j in range(3):
      out = out + xp[:, i : i + h, j : j + w] * kernel[i, j]
  return out


@pytest.mark.parametrize('ws', [2, 3, 4, 5, 8])
def test_depthwise3x3_reflect_matches_numpy(ws):
  rng = np.random.default_rng(ws)
  x = rng.normal(size=(3, ws, ws, 6)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 6)).astype(np.float32)
  bias = rng.normal(size=(6,)).astype(np.float32)
  got = feedforward.depthwise3x3_reflect(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))
  assert got.shape == x.shape
  np.testing.assert_allclose(np.asarray(got), _numpy_reference(x, kernel, bias), atol=1e-5)


def test_both_forms_are_exercised():
  # 4x4 windows take the matrix form, 8x8 the shifted reads; the test above covers both.
  assert 4 * 4 <= feedforward.MATRIX_FORM_MAX_PIXELS < 5 * 5
