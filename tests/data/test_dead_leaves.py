"""Dead-leaves pictures: procedural images with the statistics of photographs."""

import numpy as np
import pytest

from lmdvit_jax.data import dead_leaves, open_source


def test_radii_follow_the_power_law_within_bounds():
  rng = np.random.default_rng(0)
  radii = np.array([dead_leaves._radius(rng) for _ in range(20000)])
  lo, hi = dead_leaves.RADII
  assert radii.min() >= lo and radii.max() <= hi
  # Density r^-3: P(r > 2 lo) = (1/4 - (lo/hi)^2) / (1 - (lo/hi)^2), about a quarter.
  assert np.mean(radii > 2 * lo) == pytest.approx(0.25, abs=0.02)


def test_images_are_deterministic_textured_and_split_apart():
  a = dead_leaves.image(np.random.default_rng(1), size=96)
  b = dead_leaves.image(np.random.default_rng(1), size=96)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (96, 96, 3) and a.dtype == np.uint8
  detail = np.abs(np.diff(a.astype(float), axis=1)).mean()
  assert detail > 2  # edges and texture, not flat colour
  train, val = dead_leaves.names('train'), dead_leaves.names('val')
  assert len(train) == dead_leaves.COUNT['train'] and not set(train) & set(val)
  assert not np.array_equal(dead_leaves.load(train[0]), dead_leaves.load(val[0]))
  with pytest.raises(ValueError, match='split'):
    dead_leaves.names('holdout')


def test_dead_leaves_mix_with_photos_in_a_data_spec():
  source = open_source('synthetic?size=64&count=2&photos=skimage,deadleaves', split='train')
  assert len(source.photos) == 11 + dead_leaves.COUNT['train']
  example = source.example(0)
  assert example['blur'].shape == (64, 64, 3)
