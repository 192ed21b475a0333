"""Tests for lmdvit_jax.metrics against hand computations and scikit-image."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from scipy import signal
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lmdvit_jax import metrics


def _pair(shape, noise=0.08, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.random(shape)
  b = np.clip(a + noise * rng.standard_normal(shape), 0.0, 1.0)
  return a, b


def _sk_ssim(a, b):
  # skimage pads by reflection, then crops (win - 1) // 2 = 5 pixels before
  # averaging: over that region it is the valid-only SSIM used here.
  return structural_similarity(
    a,
    b,
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
    data_range=1.0,
    channel_axis=-1,
  )


def _np_ssim_map(a, b):
  """Independent float64 reference: 2-D valid convolution per channel."""
  g = metrics.gaussian_window()
  win = np.outer(g, g)
  c1, c2 = 0.01**2, 0.03**2
  maps = []
  for c in range(a.shape[-1]):
    x, y = a[..., c], b[..., c]
    f = lambda z: signal.convolve2d(z, win, mode='valid')
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    maps.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
  return np.stack(maps, -1)


# ------------------------------------------------------------------ PSNR


def test_psnr_identical_images():
  a, _ = _pair((16, 16, 3))
  a = jnp.asarray(a, jnp.float32)
  # Default eps = 1e-8 as the official (pyiqa) PSNR: capped at 80 dB.
  np.testing.assert_allclose(metrics.psnr(a, a), 80.0, rtol=1e-6)
  assert np.isposinf(metrics.psnr(a, a, eps=0.0))


def test_psnr_constant_offset():
  a = jnp.full((2, 8, 12, 3), 0.3, jnp.float32)
  # MSE = 0.1^2 = 1e-2 -> 20 dB exactly.
  np.testing.assert_allclose(metrics.psnr(a + 0.1, a, eps=0.0), [20.0, 20.0], rtol=1e-5)
  np.testing.assert_allclose(metrics.psnr(a + 0.1, a), 10 * np.log10(1 / 1.000001e-2), rtol=1e-5)
  # Same images on a 0-255 scale.
  np.testing.assert_allclose(
    metrics.psnr(255 * (a + 0.1), 255 * a, data_range=255.0, eps=0.0), 20.0, rtol=1e-5
  )


def test_psnr_matches_skimage_and_batches():
  a, b = _pair((3, 20, 24, 3))
  got = metrics.psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), eps=0.0)
  assert got.shape == (3,)
  want = [peak_signal_noise_ratio(a[i], b[i], data_range=1.0) for i in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ------------------------------------------------------------------ SSIM


@pytest.mark.parametrize('shape', [(32, 32, 3), (23, 41, 3), (40, 17, 1)])
def test_ssim_matches_skimage_float32(shape):
  a, b = _pair(shape, seed=len(shape) + shape[0])
  got = metrics.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(got, _sk_ssim(a, b), atol=1e-5)


def test_ssim_matches_skimage_float64_exactly():
  a, b = _pair((30, 26, 3), noise=0.2)
  with jax.enable_x64(True):
    got = float(metrics.ssim(jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(got, _sk_ssim(a, b), rtol=0, atol=1e-12)


def test_ssim_gradient_matches_finite_differences():
  # The Gaussian filter has a hand-written backward pass (a full correlation).
  a, b = _pair((2, 17, 14, 3), noise=0.2)
  with jax.enable_x64(True):
    jax.test_util.check_grads(
      lambda p: metrics.ssim(p, jnp.asarray(b)).sum(),
      (jnp.asarray(a),),
      order=1,
      modes=['rev'],
      eps=1e-6,
    )
    g = jax.grad(lambda p: metrics.ssim(p, jnp.asarray(b)).sum())(jnp.asarray(a))
  assert np.all(np.abs(np.asarray(g)).sum(axis=(1, 2, 3)) > 0)  # every image got one


def test_ssim_map_matches_valid_convolution():
  a, b = _pair((25, 30, 3), noise=0.15)
  got = metrics.ssim_map(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  assert got.shape == (15, 20, 3)
  np.testing.assert_allclose(got, _np_ssim_map(a, b), atol=2e-5)


def test_ssim_is_per_channel_mean_and_batched():
  a, b = _pair((2, 24, 24, 3))
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  got = metrics.ssim(a32, b32)
  assert got.shape == (2,)
  per_channel = np.stack(
    [metrics.ssim(a32[..., c : c + 1], b32[..., c : c + 1]) for c in range(3)], -1
  )
  np.testing.assert_allclose(got, per_channel.mean(-1), rtol=1e-6)
  np.testing.assert_allclose(got[1], metrics.ssim(a32[1], b32[1]), rtol=1e-6)


def test_ssim_identical_is_one():
  a, _ = _pair((20, 20, 3))
  a = jnp.asarray(a, jnp.float32)
  np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-6)


def test_ssim_rejects_small_images():
  x = jnp.zeros((10, 30, 3))
  with pytest.raises(ValueError):
    metrics.ssim(x, x)


# ------------------------------------------------------------------ masks


def _mask(shape_hw, seed=1):
  rng = np.random.default_rng(seed)
  m = np.zeros(shape_hw + (1,), np.float32)
  h, w = shape_hw
  m[h // 4 : 3 * h // 4, w // 3 : w - 2] = 1.0
  m[rng.random(shape_hw) < 0.05] = 1.0  # a few stray pixels
  return m


def test_weighted_psnr_equals_psnr_on_masked_pixels():
  a, b = _pair((24, 28, 3))
  m = _mask((24, 28))
  sel = np.broadcast_to(m > 0, a.shape)
  want = 10 * np.log10(1.0 / np.mean((a[sel] - b[sel]) ** 2))
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  np.testing.assert_allclose(metrics.weighted_psnr(a32, b32, m), want, rtol=1e-5)
  # A three-channel copy of the mask means the same thing.
  np.testing.assert_allclose(metrics.weighted_psnr(a32, b32, np.repeat(m, 3, -1)), want, rtol=1e-5)
  # Outside the mask: sharp_psnr.
  want_sharp = 10 * np.log10(1.0 / np.mean((a[~sel] - b[~sel]) ** 2))
  np.testing.assert_allclose(metrics.sharp_psnr(a32, b32, m), want_sharp, rtol=1e-5)


def test_weighted_psnr_full_and_empty_masks():
  a, b = _pair((2, 16, 16, 3))
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  ones = np.ones((2, 16, 16, 1), np.float32)
  np.testing.assert_allclose(
    metrics.weighted_psnr(a32, b32, ones), metrics.psnr(a32, b32, eps=0.0), rtol=1e-6
  )
  assert np.all(np.isnan(metrics.weighted_psnr(a32, b32, 0 * ones)))
  assert np.all(np.isnan(metrics.sharp_psnr(a32, b32, ones)))  # GoPro case
  # Only one image of the batch has an empty mask.
  mixed = ones.copy()
  mixed[1] = 0
  got = metrics.weighted_psnr(a32, b32, mixed)
  assert np.isfinite(got[0]) and np.isnan(got[1])


def test_weighted_psnr_inf_when_equal_inside_mask():
  a, b = _pair((16, 16, 3))
  m = np.zeros((16, 16, 1), np.float32)
  m[4:8, 4:8] = 1
  b = np.where(m > 0, a, b)
  assert np.isposinf(
    metrics.weighted_psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), m)
  )


def test_weighted_ssim_is_masked_mean_of_ssim_map():
  a, b = _pair((2, 30, 34, 3), noise=0.1)
  m = np.stack([_mask((30, 34), 1), _mask((30, 34), 2)])
  ref = [_np_ssim_map(a[i], b[i]) for i in range(2)]
  want = []
  for i in range(2):
    w = np.broadcast_to(m[i, 5:-5, 5:-5], ref[i].shape)
    want.append((ref[i] * w).sum() / w.sum())
  got = metrics.weighted_ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), m)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_weighted_ssim_full_and_empty_masks():
  a, b = _pair((20, 22, 3))
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  np.testing.assert_allclose(
    metrics.weighted_ssim(a32, b32, np.ones((20, 22, 1), np.float32)),
    metrics.ssim(a32, b32),
    rtol=1e-6,
  )
  assert np.isnan(metrics.weighted_ssim(a32, b32, np.zeros((20, 22, 1))))
  # Blur only in the 5-pixel border: no valid SSIM position is blurred.
  border = np.zeros((20, 22, 1), np.float32)
  border[:3] = 1
  assert np.isnan(metrics.weighted_ssim(a32, b32, border))
  assert np.isfinite(metrics.weighted_psnr(a32, b32, border))


# ------------------------------------------------------------------ pruning


def _quadrant_mask():
  m = np.zeros((1, 8, 8, 1), np.float32)
  m[0, :4, :4] = 1  # blurred top-left quadrant: 16 pixels of 64
  return m


def test_pruning_metrics_hand_made():
  mask = _quadrant_mask()
  top_half = np.array([[[1, 1], [0, 0]]], np.float32)  # windows of 4x4 px
  one_corner = np.zeros((1, 4, 4), np.float32)  # windows of 2x2 px
  one_corner[0, 0, 0] = 1
  nothing = np.zeros((1, 2, 2), np.float32)
  everything = np.ones((1, 1, 1), np.float32)
  out = metrics.pruning_metrics((top_half, one_corner, nothing, everything), mask)
  for v in out.values():
    assert v.shape == (1, 4)
  # top_half: TP 16, FP 16, FN 0, TN 32.
  # one_corner: TP 4, FP 0, FN 12, TN 48.
  # nothing: TP 0, FP 0, FN 16, TN 48 -> precision and recall 0 by convention.
  # everything: TP 16, FP 48.
  np.testing.assert_allclose(out['precision'][0], [0.5, 1.0, 0.0, 0.25])
  np.testing.assert_allclose(out['recall'][0], [1.0, 0.25, 0.0, 1.0])
  np.testing.assert_allclose(out['accuracy'][0], [48 / 64, 52 / 64, 48 / 64, 16 / 64])
  np.testing.assert_allclose(out['kept_fraction'][0], [0.5, 1 / 16, 0.0, 1.0])


def test_an_image_without_blur_has_no_pruning_precision_or_recall():
  mask = np.zeros((2, 8, 8, 1), np.float32)
  mask[1, :4, :4] = 1  # the second image has blur, the first none
  kept = np.ones((2, 2, 2), np.float32)
  out = metrics.pruning_metrics([kept], mask)
  assert np.isnan(out['recall'][0, 0]) and np.isnan(out['precision'][0, 0])
  np.testing.assert_allclose([out['recall'][1, 0], out['precision'][1, 0]], [1.0, 0.25])
  np.testing.assert_allclose(out['kept_fraction'][:, 0], [1.0, 1.0])
  np.testing.assert_allclose(out['accuracy'][:, 0], [0.0, 0.25])


def test_pruning_confusion_shift_and_valid():
  mask = _quadrant_mask()
  d = np.array([[[1, 0], [0, 0]]], np.float32)
  up = np.asarray(metrics.upsample_decision(d, 8, 8, shifted=True))[0]
  # The kept window of the shifted grid covers rows and columns 2..5.
  want = np.zeros((8, 8))
  want[2:6, 2:6] = 1
  np.testing.assert_array_equal(up, want)
  c = metrics.pruning_confusion(d, mask, shifted=True)
  np.testing.assert_allclose([c['tp'][0], c['fp'][0], c['fn'][0], c['tn'][0]], [4, 12, 12, 36])
  # Count only the left half of the image (e.g. the rest is padding).
  valid = np.zeros_like(mask)
  valid[..., :4, :] = 1
  c = metrics.pruning_confusion(d, mask, valid=valid)
  np.testing.assert_allclose([c['tp'][0], c['fp'][0], c['fn'][0], c['tn'][0]], [16, 0, 0, 16])


def test_pruning_metrics_of_a_share_of_passes():
  # A self-ensemble's map: the share of passes that kept each window counts as
  # that share of its pixels, so the scores are those of the passes pooled.
  mask = _quadrant_mask()  # 16 blurred pixels, the top-left window of a 2x2 grid
  kept_by_one = np.array([[[1, 0], [1, 0]]], np.float32)
  kept_by_other = np.array([[[1, 1], [0, 0]]], np.float32)
  mean = (kept_by_one + kept_by_other) / 2
  pooled = {
    k: sum(metrics.pruning_confusion(d, mask)[k] for d in (kept_by_one, kept_by_other))
    for k in ('tp', 'fp', 'fn', 'tn')
  }
  c = metrics.pruning_confusion(mean, mask)
  for k in pooled:
    np.testing.assert_allclose(2 * c[k], pooled[k])
  out = metrics.pruning_metrics([mean], mask)
  np.testing.assert_allclose(out['precision'][0], [0.5])
  np.testing.assert_allclose(out['recall'][0], [1.0])
  np.testing.assert_allclose(out['kept_fraction'][0], [0.5])


def test_pruning_metrics_batch_and_errors():
  mask = np.concatenate([_quadrant_mask(), np.ones((1, 8, 8, 1), np.float32)])
  d = np.array([[[1, 1], [0, 0]], [[1, 1], [0, 0]]], np.float32)
  out = metrics.pruning_metrics([d], mask)
  np.testing.assert_allclose(out['precision'][:, 0], [0.5, 1.0])
  np.testing.assert_allclose(out['recall'][:, 0], [1.0, 0.5])
  assert metrics.pruning_metrics((), mask)['precision'].shape == (2, 0)
  with pytest.raises(ValueError):
    metrics.pruning_metrics([np.ones((2, 3, 3))], mask)  # 8 % 3 != 0


# ------------------------------------------------------------------ jit


def test_everything_jits():
  a, b = _pair((2, 32, 32, 3))
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  m = jnp.asarray(np.stack([_mask((32, 32))] * 2))
  for fn in (metrics.psnr, metrics.ssim):
    np.testing.assert_allclose(jax.jit(fn)(a32, b32), fn(a32, b32), rtol=1e-6)
  for fn in (metrics.weighted_psnr, metrics.sharp_psnr, metrics.weighted_ssim):
    np.testing.assert_allclose(jax.jit(fn)(a32, b32, m), fn(a32, b32, m), rtol=1e-6)
  decisions = (jnp.ones((2, 4, 4)), jnp.zeros((2, 2, 2)).at[:, 0, 0].set(1))
  jitted = jax.jit(metrics.pruning_metrics, static_argnames='shifted')(
    decisions, m, shifted=(False, True)
  )
  eager = metrics.pruning_metrics(decisions, m, shifted=(False, True))
  for k in eager:
    np.testing.assert_allclose(jitted[k], eager[k])
