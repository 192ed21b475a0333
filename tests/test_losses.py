"""Tests for lmdvit_jax.losses."""

import dataclasses
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lmdvit_jax import losses, metrics


class _Outputs(NamedTuple):
  restored: jax.Array
  scores: tuple


def _images(b=2, h=32, w=32, seed=0):
  rng = np.random.default_rng(seed)
  target = rng.random((b, h, w, 3)).astype(np.float32)
  pred = np.clip(target + 0.1 * rng.standard_normal(target.shape), 0, 1)
  return jnp.asarray(pred, jnp.float32), jnp.asarray(target)


def _mask(b=2, h=32, w=32):
  m = np.zeros((b, h, w, 1), np.float32)
  m[:, 8:24, 4:20] = 1
  return jnp.asarray(m)


# ------------------------------------------------------------ reconstruction


def test_identical_images_give_zero():
  _, t = _images()
  m = _mask()
  for mask in (None, m):
    chex.assert_trees_all_close(losses.l1_loss(t, t, mask), 0.0)
    chex.assert_trees_all_close(losses.ssim_loss(t, t, mask), 0.0, atol=1e-6)
  for mode in ('modulus', 'parts'):
    chex.assert_trees_all_close(losses.fft_loss(t, t, mode), 0.0)
  # SSIM of an image with itself is 1.
  np.testing.assert_allclose(metrics.ssim(t, t), [1.0, 1.0], atol=1e-6)


def test_l1_known_offsets():
  _, t = _images()
  m = _mask()
  chex.assert_trees_all_close(losses.l1_loss(t + 0.2, t), 0.2, rtol=1e-5)
  chex.assert_trees_all_close(losses.l1_loss(t + 0.2, t, m), 0.2, rtol=1e-5)
  # Error only inside the mask (16x16 of 32x32 pixels).
  p = t + 0.3 * m
  chex.assert_trees_all_close(losses.l1_loss(p, t, m), 0.3, rtol=1e-5)
  chex.assert_trees_all_close(losses.l1_loss(p, t), 0.3 * 256 / 1024, rtol=1e-5)
  # Error only outside the mask: invisible to the weighted term.
  chex.assert_trees_all_close(losses.l1_loss(t + 0.3 * (1 - m), t, m), 0.0, atol=1e-7)


def test_l1_weighted_matches_numpy_and_empty_mask_falls_back():
  p, t = _images()
  m = np.array(_mask())
  m[1] = 0  # second image: no blur at all
  err = np.abs(np.asarray(p) - np.asarray(t))
  sel = np.broadcast_to(m[0] > 0, err[0].shape)
  want = 0.5 * (err[0][sel].mean() + err[1].mean())
  chex.assert_trees_all_close(losses.l1_loss(p, t, m), want, rtol=1e-5)


def test_ssim_loss_reuses_metric():
  p, t = _images()
  m = np.array(_mask())
  np.testing.assert_allclose(losses.ssim_loss(p, t), 1 - np.mean(metrics.ssim(p, t)), rtol=1e-6)
  np.testing.assert_allclose(
    losses.ssim_loss(p, t, m), 1 - np.mean(metrics.weighted_ssim(p, t, m)), rtol=1e-6
  )
  m[1] = 0
  want = 1 - 0.5 * (metrics.weighted_ssim(p[0], t[0], m[0]) + metrics.ssim(p[1], t[1]))
  np.testing.assert_allclose(losses.ssim_loss(p, t, m), want, rtol=1e-6)


def test_fft_known_constant_offset():
  b, h, w = 2, 16, 24
  _, t = _images(b, h, w)
  c = 0.05
  # A constant offset only moves the DC coefficient, by c * H * W.
  n_coeffs = h * (w // 2 + 1)
  want = c * h * w / n_coeffs
  chex.assert_trees_all_close(losses.fft_loss(t + c, t, 'modulus'), want, rtol=1e-4)
  chex.assert_trees_all_close(losses.fft_loss(t + c, t, 'parts'), want / 2, rtol=1e-4)


def test_fft_matches_numpy():
  p, t = _images(2, 16, 20)
  d = np.fft.rfft2(np.asarray(p, np.float64), axes=(1, 2)) - np.fft.rfft2(
    np.asarray(t, np.float64), axes=(1, 2)
  )
  np.testing.assert_allclose(losses.fft_loss(p, t, 'modulus'), np.abs(d).mean(), rtol=1e-4)
  np.testing.assert_allclose(
    losses.fft_loss(p, t, 'parts'), np.abs(np.stack([d.real, d.imag])).mean(), rtol=1e-4
  )
  with pytest.raises(ValueError):
    losses.fft_loss(p, t, 'phase')


# ------------------------------------------------------------------ pruning


def _logits(p_keep):
  """Token logits [..., 2] whose softmax gives keep probability p_keep."""
  p = np.clip(p_keep, 1e-6, 1 - 1e-6)
  return jnp.asarray(np.stack([np.log(p), np.log1p(-p)], -1), jnp.float32)


def test_downsample_mask():
  m = _mask(1, 32, 32)
  d = losses.downsample_mask(m, 4, 4)  # 8x8 pixels per token
  want = np.array([[0, 0, 0, 0], [0.5, 1, 0.5, 0], [0.5, 1, 0.5, 0], [0, 0, 0, 0]])
  np.testing.assert_allclose(d[0], want)
  with pytest.raises(ValueError):
    losses.downsample_mask(m, 5, 4)


def test_pruning_loss_lowest_when_matching_mask():
  m = _mask()
  grids = [(32, 32), (8, 8), (4, 4)]
  targets = [np.asarray(losses.downsample_mask(m, *g)) for g in grids]
  matched = tuple(_logits(t) for t in targets)
  mismatched = tuple(_logits(1 - t) for t in targets)
  uniform = tuple(jnp.zeros(t.shape + (2,)) for t in targets)
  l_match = losses.pruning_loss(matched, m)
  l_mis = losses.pruning_loss(mismatched, m)
  l_uni = losses.pruning_loss(uniform, m)
  np.testing.assert_allclose(l_uni, np.log(2.0), rtol=1e-6)
  assert l_match < l_uni < l_mis
  # p == soft target is the minimum: the gradient wrt the logits vanishes.
  g = jax.grad(lambda s: losses.pruning_loss(s, m))(matched)
  for gi in g:
    np.testing.assert_allclose(gi, 0.0, atol=1e-6)
  # At full resolution the target is binary: matched logits give ~0 loss.
  np.testing.assert_allclose(losses.pruning_loss(matched[:1], m), 0.0, atol=1e-5)


def test_pruning_loss_hard_targets_and_empty():
  m = _mask()
  t = np.asarray(losses.downsample_mask(m, 4, 4))
  hard = (t >= 0.5).astype(np.float32)
  soft_l = losses.pruning_loss((_logits(hard),), m, hard_targets=True)
  np.testing.assert_allclose(soft_l, 0.0, atol=1e-5)
  chex.assert_trees_all_close(losses.pruning_loss((), m), 0.0)


# ------------------------------------------------------------------ total


def _outputs_and_batch():
  p, t = _images()
  m = _mask()
  scores = (jnp.zeros((2, 32, 32, 2)), jnp.ones((2, 8, 8, 2)), _logits(np.full((2, 4, 4), 0.7)))
  return _Outputs(p, scores), {'sharp': t, 'mask': m}


def test_total_loss_combines_terms():
  out, batch = _outputs_and_batch()
  w = losses.LossWeights(l1=1.0, ssim=0.5, fft=0.1, prune=2.0)
  loss, terms = losses.total_loss(out, batch, w)
  assert set(terms) == {'l1', 'ssim', 'fft', 'prune', 'sharp'}
  want = terms['l1'] + 0.5 * terms['ssim'] + 0.1 * terms['fft'] + 2.0 * terms['prune']
  chex.assert_trees_all_close(loss, want, rtol=1e-6)
  chex.assert_trees_all_close(
    terms['l1'], losses.l1_loss(out.restored, batch['sharp'], batch['mask'])
  )
  # A ConfigDict with the same fields works the same way.
  cfg = ml_collections.ConfigDict(dataclasses.asdict(w))
  chex.assert_trees_all_close(losses.total_loss(out, batch, cfg)[0], loss)
  with pytest.raises(dataclasses.FrozenInstanceError):
    w.l1 = 2.0  # type: ignore[misc]
  # Defaults are the paper's reconstruction weights.
  d = losses.LossWeights()
  assert (d.l1, d.ssim, d.fft) == (1.0, 1.0, 0.1)


def test_gradients_finite_even_at_perfect_output():
  out, batch = _outputs_and_batch()

  def f(restored, scores):
    return losses.total_loss(_Outputs(restored, scores), batch)[0]

  grad = jax.grad(f, argnums=(0, 1))
  for restored in (out.restored, batch['sharp']):  # second: zero error
    g_img, g_scores = grad(restored, out.scores)
    chex.assert_tree_all_finite((g_img, g_scores))
  # Empty masks (all-sharp crops) too.
  batch = dict(batch, mask=jnp.zeros_like(batch['mask']))
  grad = jax.grad(f, argnums=(0, 1))
  chex.assert_tree_all_finite(grad(out.restored, out.scores))


def test_everything_jits():
  out, batch = _outputs_and_batch()
  p, t, m = out.restored, batch['sharp'], batch['mask']
  for fn in (losses.l1_loss, losses.ssim_loss):
    chex.assert_trees_all_close(jax.jit(fn)(p, t, m), fn(p, t, m), rtol=1e-5)
  chex.assert_trees_all_close(jax.jit(losses.fft_loss)(p, t), losses.fft_loss(p, t), rtol=1e-5)
  chex.assert_trees_all_close(
    jax.jit(losses.pruning_loss)(out.scores, m), losses.pruning_loss(out.scores, m), rtol=1e-5
  )
  jitted = jax.jit(losses.total_loss)(out, batch)
  chex.assert_trees_all_close(jitted, losses.total_loss(out, batch), rtol=1e-5)


def test_sharp_l1_only_sees_pixels_outside_the_mask():
  p, t = _images()
  m = _mask()
  # Changing pixels inside the mask does not move it; outside it does.
  inside = jnp.where(m > 0, 1.0 - p, p)
  np.testing.assert_allclose(
    losses.sharp_l1_loss(inside, t, m), losses.sharp_l1_loss(p, t, m), rtol=1e-6
  )
  err = np.abs(np.asarray(p) - np.asarray(t))
  outside = np.broadcast_to(np.asarray(m) == 0, err.shape)
  want = np.mean([err[i][outside[i]].mean() for i in range(2)])
  np.testing.assert_allclose(losses.sharp_l1_loss(p, t, m), want, rtol=1e-5)
  # An image blurred everywhere contributes 0.
  np.testing.assert_allclose(losses.sharp_l1_loss(p, t, jnp.ones_like(m)), 0.0)
  w = losses.LossWeights(sharp=2.0)
  loss, terms = losses.total_loss(_Outputs(p, ()), {'sharp': t, 'mask': m}, w)
  want = terms['l1'] + terms['ssim'] + 0.1 * terms['fft'] + terms['prune'] + 2 * terms['sharp']
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_balanced_pruning_loss_weighs_both_sides_equally():
  m = np.zeros((1, 16, 16, 1), np.float32)
  m[:, :2, :2] = 1  # 4 of 256 tokens are blurred
  m = jnp.asarray(m)
  t = np.asarray(losses.downsample_mask(m, 16, 16))
  prune_all = (_logits(np.zeros_like(t)),)  # p(keep) ~ 0 everywhere
  keep_all = (_logits(np.ones_like(t)),)  # p(keep) ~ 1 everywhere
  # Plain cross-entropy: pruning everything is nearly free (4 tokens wrong);
  # balanced, it costs as much as keeping everything (each side weighs half).
  plain_prune = losses.pruning_loss(prune_all, m)
  plain_keep = losses.pruning_loss(keep_all, m)
  assert plain_prune < 0.1 * plain_keep
  bal_prune = losses.pruning_loss(prune_all, m, balanced=True)
  bal_keep = losses.pruning_loss(keep_all, m, balanced=True)
  np.testing.assert_allclose(bal_prune, bal_keep, rtol=1e-2)
  # Uniform logits: ln 2 either way; a perfect predictor: ~0.
  uniform = (jnp.zeros((1, 16, 16, 2)),)
  np.testing.assert_allclose(losses.pruning_loss(uniform, m, balanced=True), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(losses.pruning_loss((_logits(t),), m, balanced=True), 0, atol=1e-4)


def test_sharp_margin_makes_invisible_errors_free():
  """With a margin of half an 8-bit step, errors the saved output hides cost nothing."""
  t = jnp.full((1, 8, 8, 3), 0.5)
  m = jnp.zeros((1, 8, 8, 1))
  margin = 0.5 / 255
  np.testing.assert_allclose(losses.sharp_l1_loss(t + 0.9 * margin, t, m, margin), 0.0)
  np.testing.assert_allclose(losses.sharp_l1_loss(t + 0.01, t, m, margin), 0.01 - margin, rtol=1e-5)
  grad = jax.grad(lambda p: losses.sharp_l1_loss(p, t, m, margin))(t + 0.5 * margin)
  np.testing.assert_array_equal(grad, 0.0)  # no pull towards exactly zero
