"""Synthetic local motion blur: photos, kernels, triples, determinism, speed."""

import time

import numpy as np
import pytest

from lmdvit_jax.data import motion, open_source, photos, synthetic

from .builders import save


def test_package_photos_load_from_the_installed_packages():
  for name in photos.PACKAGE_PHOTOS:
    photo = photos._package_photo(name)
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name
    assert min(photo.shape[:2]) >= 256, name
    assert photo.std() > 10, name  # A real picture, not a blank placeholder.


@pytest.mark.parametrize('photo_set', sorted(photos.PHOTO_SETS))
def test_photo_sets_hold_out_the_same_val_and_test_photos(photo_set):
  train = set(photos.package_photos('train', photo_set).names)
  val = set(photos.package_photos('val', photo_set).names)
  test = set(photos.package_photos('test', photo_set).names)
  assert test == set(photos.TEST_PHOTOS) and val == set(photos.VAL_PHOTOS)
  assert not train & test and not train & val and not val & test
  assert train | test == set(photos.PHOTO_SETS[photo_set])
  assert val <= set(photos.PACKAGE_PHOTOS)


def test_larger_photo_set_adds_photos_of_other_packages():
  skimage = set(photos.package_photos('train', 'skimage').names)
  packages = set(photos.package_photos('train', 'packages').names)
  assert len(skimage) == 11 and skimage < packages and len(packages) == 15
  assert {photos.PACKAGE_PHOTOS[n][0] for n in packages - skimage} == {
    'sklearn',
    'matplotlib',
    'mahotas',
    'pywt',
  }
  with pytest.raises(ValueError, match='photo set'):
    photos.package_photos('train', 'imagenet')


def test_missing_photo_package_names_what_to_install(monkeypatch):
  monkeypatch.setitem(photos.PACKAGE_PHOTOS, 'absent', ('no_such_package_xyz', 'a.png'))
  with pytest.raises(photos.DataError, match="pip install no_such_package_xyz"):
    photos._package_photo('absent')


def test_srgb_round_trip():
  v = np.arange(256, dtype=np.uint8)
  lin = synthetic.srgb_to_linear(v)
  assert np.all(np.diff(lin) > 0) and lin[0] == 0 and abs(lin[-1] - 1) < 1e-6
  np.testing.assert_array_equal(np.round(synthetic.linear_to_srgb(lin) * 255).astype(np.uint8), v)
  np.testing.assert_allclose(synthetic.srgb_to_linear(v.astype(np.float32) / 255), lin, atol=1e-6)


@pytest.mark.parametrize('kind', motion.TRAJECTORY_KINDS)
def test_kernel_is_normalised_and_centred_on_mid_exposure(kind):
  rng = np.random.default_rng(1)
  for length in (8.0, 30.0, 64.0):
    path = motion.random_trajectory(rng, length, kind)
    np.testing.assert_allclose(path[len(path) // 2], 0.0, atol=1e-9)
    arc = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
    np.testing.assert_allclose(arc, length, rtol=1e-6)
    k = motion.trajectory_kernel(path)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-5)
    r = k.shape[0] // 2
    assert k[r, r] > 0  # The object is at its sharp position at mid-exposure.
    assert r <= length / 2 + 2 if kind == 'linear' else r <= length + 2


def test_linear_kernel_is_a_centred_segment():
  path = motion.random_trajectory(np.random.default_rng(3), 20.0, 'linear')
  k = motion.trajectory_kernel(path)
  r = k.shape[0] // 2
  ys, xs = np.mgrid[-r : r + 1, -r : r + 1]
  np.testing.assert_allclose([(k * ys).sum(), (k * xs).sum()], [0, 0], atol=1e-4)
  extent = np.sqrt((k * (ys**2 + xs**2)).sum() * 12)  # Uniform segment: var = L^2 / 12.
  np.testing.assert_allclose(extent, 20.0, rtol=0.1)


def test_same_seed_same_triple_other_seed_other_triple():
  a = synthetic.SyntheticSource(count=4, size=64, seed=7)
  b = synthetic.SyntheticSource(count=4, size=64, seed=7)
  c = synthetic.SyntheticSource(count=4, size=64, seed=8)
  for i in (0, 3):
    ea, eb, ec = a.example(i), b.example(i), c.example(i)
    for key in ('blur', 'sharp', 'mask'):
      np.testing.assert_array_equal(ea[key], eb[key])
    assert not np.array_equal(ea['sharp'], ec['sharp'])
  # Random access: example 3 does not depend on having made 0..2 first.
  np.testing.assert_array_equal(
    synthetic.SyntheticSource(count=4, size=64, seed=7).example(3)['blur'], a.example(3)['blur']
  )


def test_blur_equals_sharp_outside_the_mask_and_differs_inside():
  src = synthetic.SyntheticSource(count=12, size=96, seed=0)
  inside_diffs = []
  for i in range(len(src)):
    s = src[i]
    assert s['blur'].shape == (96, 96, 3) and s['mask'].shape == (96, 96, 1)
    assert s['blur'].dtype == np.float32 and set(np.unique(s['mask'])) <= {0.0, 1.0}
    m = s['mask'][..., 0] > 0
    assert 0 < m.mean() < 1
    np.testing.assert_array_equal(s['blur'][~m], s['sharp'][~m])
    inside_diffs.append(np.abs(s['blur'][m] - s['sharp'][m]).mean())
  assert min(inside_diffs) > 0.01 and np.mean(inside_diffs) > 0.04


def test_blur_preserves_object_energy_in_linear_light():
  # White object on black: sum(sharp) = sum(alpha), sum(blur) = sum(K * alpha) = sum(alpha).
  photos = [np.zeros((80, 80, 3), np.uint8), np.full((80, 80, 3), 255, np.uint8)]
  settings = synthetic.BlurSettings(
    blur_length=(10, 20), object_size=(0.2, 0.3), num_objects=(1, 1), max_noise=0.0
  )
  checked = 0
  for seed in range(40):
    rng = np.random.default_rng(seed)
    if rng.integers(2) != 0:
      continue  # Need the black photo as background (its first draw).
    ex = synthetic.synthesize(np.random.default_rng(seed), photos, (80, 80), settings)
    m = ex['mask'][..., 0]
    if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
      continue  # Part of the motion left the canvas.
    lin = {k: synthetic.srgb_to_linear(ex[k]).sum() for k in ('blur', 'sharp')}
    np.testing.assert_allclose(lin['blur'], lin['sharp'], rtol=0.03)
    assert not np.array_equal(ex['blur'], ex['sharp'])
    checked += 1
  assert checked >= 3


def test_train_and_test_use_disjoint_photos_and_streams():
  train = synthetic.SyntheticSource(count=2, size=32, seed=0, split='train')
  test = synthetic.SyntheticSource(count=2, size=32, seed=0, split='test')
  assert set(train.photos.names) == set(photos.package_photos('train', 'skimage').names)
  assert set(test.photos.names) == set(photos.TEST_PHOTOS)
  assert not np.array_equal(train.example(0)['sharp'], test.example(0)['sharp'])
  val = synthetic.SyntheticSource(count=2, size=32, seed=0, split='val')
  assert set(val.photos.names) == set(photos.VAL_PHOTOS)
  with pytest.raises(ValueError, match='split'):
    synthetic.SyntheticSource(split='validation')


def test_folder_of_photos_splits_by_name(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(10):
    save(tmp_path / 'photos' / f'p{i}.png', rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
  save(tmp_path / 'photos' / 'sub' / 'grey.jpg', rng.integers(0, 256, (60, 40), dtype=np.uint8))
  every = {f'p{i}' for i in range(10)} | {'sub/grey'}
  train = photos.folder_photos(tmp_path / 'photos', 'train', val_fraction=0.0)
  test = photos.folder_photos(tmp_path / 'photos', 'test')
  assert len(train) >= 1 and len(test) >= 1
  assert not set(train.names) & set(test.names)
  assert set(train.names) | set(test.names) == every
  # Val comes out of train only; test stays where it was.
  train_less = photos.folder_photos(tmp_path / 'photos', 'train', val_fraction=0.5)
  val = photos.folder_photos(tmp_path / 'photos', 'val', val_fraction=0.5)
  assert len(val) >= 1 and len(train_less) >= 1
  assert set(train_less.names) | set(val.names) == set(train.names)
  assert not set(train_less.names) & set(val.names)
  assert photos.folder_photos(tmp_path / 'photos', 'test').names == test.names
  assert all(p.shape[2] == 3 for p in train)
  src = synthetic.SyntheticSource(count=2, size=32, photos=tmp_path / 'photos')
  assert src.example(1)['blur'].shape == (32, 32, 3)
  with pytest.raises(FileNotFoundError):
    photos.folder_photos(tmp_path / 'nope')


def test_folder_too_small_for_val_says_so(tmp_path):
  for name in ('a', 'b'):
    save(tmp_path / f'{name}.png', np.full((20, 20, 3), 100, np.uint8))
  # Two photos: one for train and one for test, whatever the fractions.
  assert len(photos.folder_photos(tmp_path, 'train', val_fraction=1.0)) == 1
  assert len(photos.folder_photos(tmp_path, 'test', val_fraction=1.0)) == 1
  with pytest.raises(photos.DataError, match="no val photos"):
    photos.folder_photos(tmp_path, 'val', val_fraction=1.0)


def test_generator_is_fast():
  for size, budget_ms in ((128, 40), (256, 80)):
    src = synthetic.SyntheticSource(count=20, size=size, seed=1)
    src.example(0)  # Decode and cache the photos.
    start = time.perf_counter()
    for i in range(1, 11):
      src.example(i)
    per_triple_ms = (time.perf_counter() - start) * 100
    assert per_triple_ms < budget_ms, (size, per_triple_ms)


def test_objects_are_the_most_textured_of_their_tries():
  """A photo half flat, half noise: objects cut from the best of 8 crops carry
  more detail (and so more visible blur) than objects from a single crop."""
  photo = np.full((96, 192, 3), 128, np.uint8)
  photo[:, 96:] = np.random.default_rng(1).integers(0, 256, (96, 96, 3), np.uint8)
  assert synthetic.texture_energy(photo[:, 96:]) > 50 * (
    1 + synthetic.texture_energy(photo[:, :96])
  )

  def object_detail(tries):
    settings = synthetic.BlurSettings(
      blur_length=(4.0, 6.0), texture_tries=tries, max_noise=0.0, num_objects=(1, 1)
    )
    detail = []
    for seed in range(16):
      t = synthetic.synthesize(np.random.default_rng(seed), [photo], (48, 48), settings)
      m = t['mask'][..., 0] > 0
      if m.any():
        detail.append(np.abs(t['blur'].astype(float) - t['sharp'])[m].mean())
    return np.mean(detail)

  assert object_detail(8) > 1.3 * object_detail(1)


def test_default_settings_are_realistic_local_blur():
  """Defaults: motion paths of 2-12 px; the mask covers a few percent to a
  third of the image; the old extreme setting stays available as a preset."""
  s = synthetic.BlurSettings()
  assert s.blur_length == (2.0, 12.0) and s.texture_tries > 1
  assert synthetic.PRESETS['extreme'].blur_length == (8.0, 64.0)
  shares = [
    synthetic.synthesize(np.random.default_rng(i), photos.package_photos('test'), (128, 192))[
      'mask'
    ].mean()
    for i in range(12)
  ]
  assert 0.005 < min(shares) and max(shares) < 0.4 and 0.02 < np.mean(shares) < 0.25


def test_camera_shake_paths_have_the_asked_length_and_uneven_speed():
  rng = np.random.default_rng(0)
  for length in (3.0, 12.0):
    path = motion.shake_trajectory(rng, length)
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    assert steps.sum() == pytest.approx(length, rel=1e-6)
    assert steps.std() > 0.05 * steps.mean()  # not constant speed
    np.testing.assert_allclose(path[len(path) // 2], 0.0, atol=1e-9)


@pytest.mark.parametrize('kind', synthetic.HARD_SHAPES)
def test_hard_shapes_are_crisp_outlines_inside_their_box(kind):
  alpha = synthetic.hard_shape_alpha(np.random.default_rng(1), 40, 60, kind)
  assert alpha.shape == (40, 60) and alpha.min() >= 0 and alpha.max() <= 1
  assert alpha[0].max() == alpha[-1].max() == alpha[:, 0].max() == alpha[:, -1].max() == 0
  assert 0.1 < alpha.mean() < 0.95
  edge = (alpha > 0) & (alpha < 1)  # anti-aliased, only along the outline
  assert 0 < edge.mean() < 0.15


def test_settings_name_only_known_outlines_and_motions():
  with pytest.raises(ValueError, match='shapes'):
    synthetic.BlurSettings(shapes=('star',))
  with pytest.raises(ValueError, match='kinds'):
    synthetic.BlurSettings(kinds=())
  with pytest.raises(ValueError, match='kind must be'):
    synthetic.hard_shape_alpha(np.random.default_rng(0), 8, 8, 'blob')


def test_camera_renders_gamma_noise_and_jpeg_and_keeps_outside_the_mask_identical():
  rng = np.random.default_rng(0)
  sharp = np.repeat(np.linspace(0.05, 0.9, 64, dtype=np.float32)[None, :, None], 48, 0)
  sharp = np.repeat(sharp, 3, 2)
  swept = np.zeros((48, 64), bool)
  swept[10:30, 20:40] = True
  blurred = np.where(swept[..., None], 0.5, sharp).astype(np.float32)
  clean = synthetic.Camera(gamma=(2.0, 2.0), gain=0.0, read=0.0, jpeg_quality=(100, 100))
  blur, out = synthetic.camera_capture(rng, blurred, sharp, swept, clean)
  assert blur.dtype == out.dtype == np.uint8 and blur.shape == (48, 64, 3)
  np.testing.assert_allclose(out, 255 * np.sqrt(sharp), atol=2.5)  # gamma 2, JPEG at 100
  np.testing.assert_array_equal(blur[~swept], out[~swept])
  noisy = synthetic.Camera(gamma=(2.0, 2.0), gain=0.01, read=0.02, jpeg_quality=(60, 60))
  blur, out = synthetic.camera_capture(np.random.default_rng(1), blurred, sharp, swept, noisy)
  np.testing.assert_array_equal(blur[~swept], out[~swept])
  assert np.abs(out.astype(float) - 255 * np.sqrt(sharp)).mean() > 1.0


def test_varied_preset_makes_valid_triples_unlike_the_default():
  pool = photos.package_photos('test')
  varied, default = synthetic.PRESETS['varied'], synthetic.PRESETS['realistic']
  objects = []
  for seed in range(8):
    ex = synthetic.synthesize(np.random.default_rng(seed), pool, (96, 128), varied)
    m = ex['mask'][..., 0] > 0
    assert ex['blur'].dtype == np.uint8 and 0 < m.mean() < 0.9
    np.testing.assert_array_equal(ex['blur'][~m], ex['sharp'][~m])
    plain = synthetic.synthesize(np.random.default_rng(seed), pool, (96, 128), default)
    objects.append(not np.array_equal(ex['sharp'], plain['sharp']))
  assert all(objects)
  source = open_source('synthetic?count=2&size=64&preset=varied')
  assert source.settings == varied
