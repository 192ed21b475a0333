"""Blur-aware crops and flips."""

import numpy as np
import pytest

from lmdvit_jax.data import crops
from lmdvit_jax.data.examples import DataError


def rare_blur_example(h=160, w=240, box=(70, 76, 100, 106)):
  y0, y1, x0, x1 = box
  mask = np.zeros((h, w, 1), np.uint8)
  mask[y0:y1, x0:x1] = 1
  rng = np.random.default_rng(0)
  sharp = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  return {'blur': sharp[::-1].copy(), 'sharp': sharp, 'mask': mask, 'name': 'x'}


def uniform_hit_rate(mask, patch):
  """Exact share of all crop positions that contain a blurred pixel."""
  h, w = mask.shape[:2]
  hits = [
    mask[y : y + patch, x : x + patch].any()
    for y in range(h - patch + 1)
    for x in range(w - patch + 1)
  ]
  return float(np.mean(hits))


def test_about_half_of_the_crops_contain_blur_when_blur_is_rare():
  ex = rare_blur_example()
  patch = 32
  q = uniform_hit_rate(ex['mask'], patch)
  assert q < 0.1  # Blur is rare: uniform crops seldom see it.
  rng = np.random.default_rng(0)
  n = 3000
  hits = centred = 0
  for _ in range(n):
    y, x, on_blur = crops.crop_origin(rng, ex['mask'], patch)
    if on_blur:
      centred += 1
      assert ex['mask'][y + patch // 2, x + patch // 2, 0] == 1  # Centre pixel is blurred.
    hits += ex['mask'][y : y + patch, x : x + patch].any()
  assert abs(centred / n - 0.5) < 0.04
  expected = 0.5 + 0.5 * q
  assert abs(hits / n - expected) < 0.04, (hits / n, expected)


def test_without_blur_aware_sampling_crops_are_uniform():
  ex = rare_blur_example()
  q = uniform_hit_rate(ex['mask'], 32)
  rng = np.random.default_rng(1)
  origins = [crops.crop_origin(rng, ex['mask'], 32, blur_prob=0.0) for _ in range(3000)]
  assert not any(c for _, _, c in origins)
  hits = np.mean([ex['mask'][y : y + 32, x : x + 32].any() for y, x, _ in origins])
  assert abs(hits - q) < 0.03
  ys = np.array([y for y, _, _ in origins])
  assert ys.min() == 0 and ys.max() == 160 - 32  # Every position is reachable.


def test_blur_centres_stay_half_a_patch_from_the_border():
  # Blur everywhere: centres must still keep the whole crop inside the image.
  mask = np.ones((50, 60, 1), np.uint8)
  rng = np.random.default_rng(2)
  for _ in range(500):
    y, x, on_blur = crops.crop_origin(rng, mask, 20, blur_prob=1.0)
    assert on_blur and 0 <= y <= 30 and 0 <= x <= 40


def test_blur_only_at_the_border_still_gets_a_crop_with_blur():
  mask = np.zeros((64, 64, 1), np.uint8)
  mask[0:2, 60:64] = 1
  rng = np.random.default_rng(3)
  for _ in range(50):
    y, x, on_blur = crops.crop_origin(rng, mask, 16, blur_prob=1.0)
    assert on_blur and mask[y : y + 16, x : x + 16].any()


def test_crop_shapes_and_errors():
  ex = rare_blur_example()
  out = crops.blur_aware_crop(np.random.default_rng(0), ex, 48)
  assert out['blur'].shape == (48, 48, 3) and out['mask'].shape == (48, 48, 1)
  assert out['name'] == 'x'
  with pytest.raises(DataError, match='smaller than'):
    crops.blur_aware_crop(np.random.default_rng(0), ex, 170)


def test_crop_is_deterministic_given_the_rng():
  ex = rare_blur_example()
  a = crops.blur_aware_crop(np.random.default_rng(5), ex, 40)
  b = crops.blur_aware_crop(np.random.default_rng(5), ex, 40)
  for key in ('blur', 'sharp', 'mask'):
    np.testing.assert_array_equal(a[key], b[key])


def test_flips_move_all_images_together():
  ex = rare_blur_example(h=20, w=30, box=(2, 5, 3, 12))
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(200):
    out = crops.random_flips(rng, ex)
    candidates = {
      (h, v): ex['sharp'][:: -1 if v else 1, :: -1 if h else 1]
      for h in (False, True)
      for v in (False, True)
    }
    ((flip_h, flip_v),) = [k for k, c in candidates.items() if np.array_equal(out['sharp'], c)]
    seen.add((flip_h, flip_v))
    ys = slice(None, None, -1 if flip_v else 1)
    xs = slice(None, None, -1 if flip_h else 1)
    for key in ('blur', 'sharp', 'mask'):
      np.testing.assert_array_equal(out[key], ex[key][ys, xs])
  assert seen == {(False, False), (True, False), (False, True), (True, True)}
  none = crops.random_flips(rng, ex, horizontal=False, vertical=False)
  np.testing.assert_array_equal(none['blur'], ex['blur'])
