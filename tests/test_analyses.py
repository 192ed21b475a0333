"""The analysis helpers (analyses/) whose figures docs/ reports."""

import jax
import numpy as np
from scipy import ndimage, stats

from analyses import blur_detection_ceiling, linear_headroom, pruning_ranking, sharp_damage


def test_ranking_matches_brute_force():
  rng = np.random.default_rng(0)
  blurred = rng.random(4000) < 0.3
  # Coarse values, so many ties between the classes.
  probability = np.round(np.clip(0.3 * blurred + 0.7 * rng.random(4000), 0, 1), 2)
  r = pruning_ranking.ranking(probability, blurred, threshold=0.5, recall=0.9)

  ranks = stats.rankdata(probability)
  pos, neg = blurred.sum(), (~blurred).sum()
  np.testing.assert_allclose(r['auc'], (ranks[blurred].sum() - pos * (pos + 1) / 2) / (pos * neg))
  kept = probability > 0.5
  np.testing.assert_allclose(r['recall'], (kept & blurred).sum() / pos)
  np.testing.assert_allclose(r['precision'], (kept & blurred).sum() / kept.sum())
  best = max(
    (probability >= t)[blurred].sum() / (probability >= t).sum()
    for t in np.unique(probability)
    if (probability >= t)[blurred].mean() >= 0.9
  )
  np.testing.assert_allclose(r['best_precision'], best)
  assert 0.5 < r['auc'] < 1 and r['best_precision'] < 1


def test_tiles_round_trip_row_major():
  image = np.arange(8 * 12 * 2).reshape(8, 12, 2)
  tiles = pruning_ranking.to_tiles(image, 4)
  assert tiles.shape == (6, 4, 4, 2)
  np.testing.assert_array_equal(tiles[1], image[:4, 4:8])
  np.testing.assert_array_equal(tiles[3], image[4:, :4])
  np.testing.assert_array_equal(pruning_ranking.from_tiles(tiles[..., 1], 8, 12), image[..., 1])


def test_ranking_of_a_perfect_predictor():
  blurred = np.arange(100) < 20
  r = pruning_ranking.ranking(blurred.astype(float), blurred, threshold=0.5, recall=0.95)
  assert r['auc'] == 1.0 and r['recall'] == 1.0 and r['precision'] == 1.0
  assert r['best_precision'] == 1.0 and r['blurred_share'] == 0.2


def test_least_squares_filter_recovers_a_known_filter():
  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(5, 5))
  samples = []
  for _ in range(2):
    blur = rng.random((24, 20, 3)).astype(np.float64)
    sharp = ndimage.correlate(blur, kernel[..., None], mode='reflect')
    mask = np.zeros((24, 20, 1))
    mask[:12] = 1  # Only masked pixels are fitted; they include the border.
    samples.append({'blur': blur, 'sharp': sharp, 'mask': mask})
  fitted = linear_headroom.fit_filter(samples, 5, budget=10_000, rng=rng)
  np.testing.assert_allclose(fitted, kernel, atol=1e-8)


def test_mean_weighted_psnr_counts_only_the_mask():
  target = np.zeros((4, 4, 3))
  pred = target.copy()
  pred[:2] = 0.1  # error 0.1 in the masked half
  pred[2:] = 0.5  # larger error outside the mask: ignored
  mask = np.zeros((4, 4, 1))
  mask[:2] = 1
  sample = {'blur': pred, 'sharp': target, 'mask': mask}
  np.testing.assert_allclose(linear_headroom.mean_wpsnr([sample], lambda b: b), 20.0, rtol=1e-6)


def test_sharp_damage_splits_the_error_outside_the_mask():
  mask = np.zeros((6, 10), bool)
  mask[:, :2] = True
  groups = sharp_damage.distance_group(mask)
  # Column 2 is 1 px from the mask, column 9 is 8 px: bins (0, 2] and (4, 8].
  assert groups[0, 2] == 0 and groups[0, 4] == 1 and groups[0, 9] == 2
  error = np.zeros((6, 10))
  error[:, 2] = 1.0
  error[:, :2] = 100.0  # inside the mask: not counted
  sums, counts = sharp_damage.error_split(error, ~mask, groups, len(sharp_damage.DISTANCE_BINS) - 1)
  np.testing.assert_array_equal(counts, [12, 12, 24, 0, 0])
  np.testing.assert_array_equal(sums, [6, 0, 0, 0, 0])
  # No blur at all: every pixel is in the farthest bin.
  assert (sharp_damage.distance_group(np.zeros((3, 3), bool)) == 4).all()


def test_window_mean_replaces_each_window_by_its_mean():
  probability = np.arange(8 * 12, dtype=float).reshape(8, 12)
  pooled = blur_detection_ceiling.window_mean(probability, 4)
  assert pooled.shape == (8, 12)
  np.testing.assert_allclose(pooled[:4, 4:8], probability[:4, 4:8].mean())
  np.testing.assert_allclose(pooled[4:, 8:], probability[4:, 8:].mean())
  np.testing.assert_allclose(pooled.mean(), probability.mean())


def test_balanced_cross_entropy_weighs_the_classes_half_each():
  mask = np.zeros((1, 4, 5), np.float32)
  mask[0, 0, :2] = 1  # 2 of 20 pixels blurred
  logits = np.where(mask > 0, 1.0, -2.0).astype(np.float32)
  softplus = lambda z: np.log1p(np.exp(z))
  # Mean over pixels of weight * BCE: blurred weight 0.5 / 0.1, sharp 0.5 / 0.9.
  want = (2 * 5.0 * softplus(-1.0) + 18 * (0.5 / 0.9) * softplus(-2.0)) / 20
  got = blur_detection_ceiling.balanced_bce(jax.numpy.asarray(logits), jax.numpy.asarray(mask))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_blur_detector_maps_images_to_pixel_logits():
  model = blur_detection_ceiling.BlurDetector(width=4)
  x = np.zeros((2, 16, 24, 3), np.float32)
  params = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(params, x).shape == (2, 16, 24)
