"""The analysis helpers of benchmarks/ that README figures rest on."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, stats

from lmdvit_jax.models import LMDViT, init_params
from tests.helpers import TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))

import blur_detection_ceiling  # pylint: disable=g-import-not-at-top,wrong-import-position
import inference as inference_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
import linear_headroom  # pylint: disable=g-import-not-at-top,wrong-import-position
import matmul_floor  # pylint: disable=g-import-not-at-top,wrong-import-position
import pruning_ranking  # pylint: disable=g-import-not-at-top,wrong-import-position
import sharp_damage  # pylint: disable=g-import-not-at-top,wrong-import-position


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
  best = max((probability >= t)[blurred].sum() / (probability >= t).sum()
             for t in np.unique(probability) if (probability >= t)[blurred].mean() >= 0.9)
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
  pred[:2] = 0.1     # error 0.1 in the masked half
  pred[2:] = 0.5     # larger error outside the mask: ignored
  mask = np.zeros((4, 4, 1))
  mask[:2] = 1
  sample = {'blur': pred, 'sharp': target, 'mask': mask}
  np.testing.assert_allclose(linear_headroom.mean_wpsnr([sample], lambda b: b), 20.0, rtol=1e-6)


def test_calibration_sets_every_predictor_to_the_target_share():
  """Exact mode is timed against a budget at its kept share: every block must keep about it."""
  model = LMDViT(**TINY)
  x = np.random.default_rng(0).uniform(size=(1, 256, 256, 3)).astype(np.float32)
  params = inference_benchmark.calibrate(model, init_params(model, 0), x, 0.3)
  out = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, x)
  shares = [float(np.mean(d)) for d in out.decisions if d.size >= 16]
  assert len(shares) >= 4
  np.testing.assert_allclose(shares, 0.3, atol=0.08)


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


def test_dot_shapes_reads_every_product_of_a_program():
  def program(x, w, q, k):
    # A linear layer over tokens, attention scores with two batch dimensions, and
    # the weight's gradient (contracting over batch and tokens).
    scores = jnp.einsum('bhqd,bhkd->bhqk', q, k)
    y = x @ w
    return y.sum() + scores.sum(), jnp.einsum('btc,bto->co', x, y)

  args = (jnp.ones((2, 10, 3)), jnp.ones((3, 5)), jnp.ones((2, 4, 6, 8)), jnp.ones((2, 4, 7, 8)))
  counts = matmul_floor.dot_shapes(jax.jit(program).lower(*args).as_text(dialect='hlo'))
  assert counts == {(1, 20, 3, 5): 1, (8, 6, 8, 7): 1, (1, 3, 20, 5): 1}
  assert sum(matmul_floor.flops(s) * c for s, c in counts.items()) == 2 * (
      20 * 3 * 5 + 8 * 6 * 8 * 7 + 3 * 20 * 5)


def test_accelerator_check_runs_every_part_in_smoke_mode(tmp_path):
  """The one-command device check cannot rot: every part runs at tiny sizes."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.helpers import REPO, subprocess_env  # pylint: disable=g-import-not-at-top
  run = subprocess.run([sys.executable, '-m', 'benchmarks.accelerator', '--smoke',
                        f'--output={tmp_path}'], cwd=REPO, env=subprocess_env(),
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads((tmp_path / 'accelerator.json').read_text())
  parts = report['parts']
  assert set(parts) == {'devices', 'parity', 'inference', 'train', 'demo', 'official'}
  assert parts['devices']['rows'][0]['platform'] == 'cpu'
  assert [r['precision'] for r in parts['parity']['rows']] == ['highest', 'default']
  assert all(r['decisions_equal'] and r['restored_max_abs'] < 1e-4
             for r in parts['parity']['rows'])
  assert {(r['mode'], r['dtype']) for r in parts['inference']['rows']} == {
      (m, d) for m in ('dense', 'exact', 'budget 0.25') for d in ('float32', 'bfloat16')}
  assert all(r['seconds'] > 0 for r in parts['inference']['rows'])
  assert len(parts['train']['rows']) == 2 and all(r['images_per_s'] > 0
                                                  for r in parts['train']['rows'])
  demo = parts['demo']['rows'][0]
  assert demo['last_step'] > demo['first_step']
  assert 'no --official_repo' in parts['official']['notes'][0]
  table = (tmp_path / 'accelerator.md').read_text()
  assert '## inference' in table and '| mode | dtype |' in table
