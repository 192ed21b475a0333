"""Full-image inference: padding geometry, cropping, clamping, compile cache, batches."""

import jax.numpy as jnp
import numpy as np
import pytest

from lmdvit_jax import ensemble as ens
from lmdvit_jax import image_io, programs, tiling
from lmdvit_jax.inference import Deblurrer, DeblurResult, DecisionBlock
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import LMDViT, init_params, pruning
from lmdvit_jax.tiling import PadGeometry
from tests.helpers import TINY  # every test module uses it: shapes compile once a process


@pytest.fixture(scope='module')
def deblurrer():
  model = LMDViT(**TINY)
  return Deblurrer(model, init_params(model, 0), warmup=False)


# ---------------------------------------------------------------------------
# Model-free geometry.


@pytest.mark.parametrize(
  'h, w, ph, pw, top, left',
  [
    (720, 1280, 768, 1280, 24, 0),
    (1436, 2152, 1536, 2176, 50, 12),  # a ReLoBlur image, as the official script pads it
    (100, 130, 128, 256, 14, 63),
    (128, 128, 128, 128, 0, 0),
    (1, 1, 128, 128, 63, 63),
  ],
)
def test_pad_geometry_is_centred(h, w, ph, pw, top, left):
  g = tiling.pad_geometry(h, w, 128)
  assert (g.padded_height, g.padded_width, g.top, g.left) == (ph, pw, top, left)


def test_pad_crop_round_trip_and_zero_border():
  g = tiling.pad_geometry(37, 50, 16)
  x = np.random.default_rng(0).uniform(0.1, 1.0, (2, 37, 50, 3)).astype(np.float32)
  padded = g.pad(x)
  assert padded.shape == (2, 48, 64, 3)
  np.testing.assert_array_equal(g.crop(padded), x)
  # Everything outside the image is zero: the sums agree.
  np.testing.assert_allclose(padded.sum(), x.sum(), rtol=1e-6)
  np.testing.assert_array_equal(padded[:, : g.top], 0)
  np.testing.assert_array_equal(padded[:, :, g.left + 50 :], 0)
  valid = g.valid()
  assert valid.shape == (48, 64, 1) and valid.sum() == 37 * 50
  assert valid[g.top, g.left, 0] == 1 and valid[g.top - 1, g.left, 0] == 0
  with pytest.raises(ValueError):
    g.pad(np.zeros((36, 50, 3)))
  with pytest.raises(ValueError):
    g.crop(np.zeros((37, 50, 3)))


def test_pad_window_is_a_window_of_the_padded_canvas():
  g = tiling.pad_geometry(37, 50, 16)  # canvas 48 x 64, image at (5, 7)
  x = np.random.default_rng(0).uniform(0.1, 1.0, (37, 50, 3)).astype(np.float32)
  canvas = g.pad(x)
  for top, left, h, w in [
    (0, 0, 48, 64),
    (0, 0, 16, 16),
    (16, 32, 32, 32),
    (32, 48, 16, 16),
    (0, 0, 4, 4),
  ]:
    np.testing.assert_array_equal(
      g.pad_window(x, top, left, h, w), canvas[top : top + h, left : left + w]
    )


def test_quantise_clamps_and_rounds():
  x = np.array([-0.3, 0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 1.0, 1.7], np.float32)
  np.testing.assert_array_equal(image_io.to_uint8(x), [0, 0, 0, 1, 255, 255])
  np.testing.assert_allclose(image_io.quantize(x), [0, 0, 0, 1 / 255, 1, 1])
  np.testing.assert_allclose(image_io.to_float(np.array([0, 65535], np.uint16)), [0, 1])
  np.testing.assert_allclose(image_io.to_float(np.array([0, 65535, 70000], np.int32)), [0, 1, 1])
  with pytest.raises(ValueError, match='non-finite'):
    image_io.to_float(np.array([0.5, np.nan], np.float32))


def test_parse_capacity():
  assert pruning.parse_capacity('exact') == 'exact'
  assert pruning.parse_capacity(' Masked ') == 'masked'
  assert pruning.parse_capacity('0.25') == 0.25
  assert pruning.parse_capacity(1) == 1.0
  for bad in ('exactly', '0', '1.5', -0.1):
    with pytest.raises(ValueError):
      pruning.parse_capacity(bad)


def test_decision_blocks_follow_network_order():
  blocks = ens.decision_blocks(LMDViT(**TINY))
  # tiny depths (1, 2, 1, 1, 1, 1, 1, 3, 1): depth-1 stages predict once, the others twice.
  assert len(blocks) == 11
  assert blocks[0] == DecisionBlock('encoder_0', 0, False)
  assert blocks[1:3] == (DecisionBlock('encoder_1', 0, False), DecisionBlock('encoder_1', 1, True))
  assert [b.stage for b in blocks[-3:]] == ['decoder_2', 'decoder_2', 'decoder_3']
  no_prune = LMDViT(**{**TINY, 'prune_loc': (0, 1, 0, 0, 0, 0, 0, 0, 0)})
  assert [b.label for b in ens.decision_blocks(no_prune)] == ['encoder_1.0', 'encoder_1.1']


def test_kept_maps_roll_shifted_grids_and_crop():
  g = PadGeometry(6, 8, 8, 8)  # one padded row above and below
  d = np.zeros((2, 2), np.uint8)
  d[0, 1] = 1  # top-right window of a 4x4 grid
  blocks = (DecisionBlock('s', 0, False), DecisionBlock('s', 1, True))
  r = DeblurResult(np.zeros((6, 8, 3)), (d, d), (0, 0), blocks, g, 0.0, 0.0)
  plain, shifted = r.kept_maps()
  want = np.zeros((8, 8), bool)
  want[0:4, 4:8] = True
  np.testing.assert_array_equal(plain, want[1:7])
  # A shifted block saw the map rolled by -2: its window covers rows/cols 2..5 + 2.
  np.testing.assert_array_equal(shifted, np.roll(want, (2, 2), axis=(0, 1))[1:7])


# ---------------------------------------------------------------------------
# The compiled model.


def test_deblur_pads_crops_and_clamps(deblurrer):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
  result = deblurrer(image)
  assert result.restored.shape == (100, 120, 3) and result.restored.dtype == np.float32
  assert np.all(np.isfinite(result.restored))
  assert result.restored.min() >= 0 and result.restored.max() <= 1
  # The random model changes the image (a gate of at least 0.1 on a random residual).
  assert np.abs(result.restored - image / 255.0).mean() > 1e-3
  assert result.geometry.padded_shape == (128, 128)
  assert len(result.decisions) == len(result.blocks) == 11
  assert result.decisions[0].shape == (16, 16)  # full-resolution window grid of 8x8 windows
  assert result.decisions[5].shape == (1, 1)  # bottleneck at 1/16
  assert all(set(np.unique(d)) <= {0, 1} for d in result.decisions)
  assert result.seconds > 0 and np.isfinite(result.flops) and result.flops > 1e6

  # The same image padded by hand (centred: 14 rows above, 4 columns left) and
  # cropped by hand gives the same pixels.
  padded = np.zeros((128, 128, 3), np.float32)
  padded[14:114, 4:124] = image / 255.0
  compiled = len(programs._EXECUTABLES)
  full = deblurrer(padded)
  assert len(programs._EXECUTABLES) == compiled  # same padded shape: no new compile
  np.testing.assert_allclose(full.restored[14:114, 4:124], result.restored, atol=1e-6)
  for a, b in zip(full.decisions, result.decisions):
    np.testing.assert_array_equal(a, b)


def test_batch_matches_single_images(deblurrer):
  rng = np.random.default_rng(2)
  images = rng.uniform(size=(2, 90, 128, 3)).astype(np.float32)
  batch = deblurrer.deblur_batch(images)
  assert batch.restored.shape == (2, 90, 128, 3) and len(batch) == 2
  assert batch.decisions[0].shape == (2, 16, 16)
  for i in range(2):
    single = deblurrer(images[i])
    np.testing.assert_allclose(batch[i].restored, single.restored, atol=1e-5)
    for a, b in zip(batch[i].decisions, single.decisions):
      np.testing.assert_array_equal(a, b)
  assert batch.flops > deblurrer.flops(90, 128)  # FLOPs of the B=2 program


def test_flops_count_a_fixed_budget_and_not_exact_mode(deblurrer):
  def flops(capacity):
    return Deblurrer(deblurrer.model.clone(capacity=capacity), deblurrer.params).flops(90, 128)

  assert 1e6 < flops(0.25) < 0.6 * flops(1.0)
  assert np.isnan(flops('exact'))  # loop trips are known only at run time


def test_rejects_bad_shapes(deblurrer):
  with pytest.raises(ValueError):
    deblurrer(np.zeros((64, 64), np.float32))
  with pytest.raises(ValueError):
    deblurrer.deblur_batch(np.zeros((1, 64, 64, 4), np.float32))


# ---------------------------------------------------------------------------
# Self-ensemble.


@pytest.mark.parametrize('t', range(8))
def test_dihedral_round_trip(t):
  x = np.arange(2 * 3 * 4 * 2).reshape(2, 3, 4, 2)
  y = ens.dihedral(x, t)
  assert y.shape == ((2, 4, 3, 2) if t >= 4 else x.shape)
  np.testing.assert_array_equal(ens.undo_dihedral(y, t), x)
  assert len({ens.dihedral(x, s).tobytes() + bytes(s >= 4) for s in range(8)}) == 8


@pytest.mark.parametrize('shifted', [False, True])
@pytest.mark.parametrize('t', range(8))
def test_window_maps_turn_back_like_their_pixels(t, shifted):
  # A keep map of a pass on a transformed canvas, turned back at window level,
  # covers the same pixels as its up-sampled pixel map turned back.
  from lmdvit_jax import metrics

  gh, gw, f = (4, 6, 8) if t < 4 else (6, 4, 8)  # the pass's grid
  d = np.random.default_rng(t).integers(0, 2, (1, gh, gw)).astype(np.float32)
  pixels = np.asarray(metrics.upsample_decision(d, gh * f, gw * f, shifted))
  back = ens.undo_dihedral_windows(d, t, shifted)
  assert back.shape == (1, 4, 6)
  np.testing.assert_array_equal(
    np.asarray(metrics.upsample_decision(back, 4 * f, 6 * f, shifted)), ens.undo_dihedral(pixels, t)
  )


def test_self_ensemble_is_equivariant_and_averages(deblurrer):
  ensemble = Deblurrer(
    deblurrer.model, deblurrer.params, InferenceSettings(self_ensemble=8), warmup=False
  )
  x = np.random.default_rng(3).uniform(size=(1, 128, 256, 3)).astype(np.float32)
  out = ensemble.deblur_batch(x)
  assert out.restored.shape == x.shape
  assert all(d.dtype == np.float32 and d.min() >= 0 and d.max() <= 1 for d in out.decisions)
  # The mean of the eight passes, each turned back by hand.
  passes = [
    ens.undo_dihedral(deblurrer.deblur_batch(ens.dihedral(x, t)).restored, t) for t in range(8)
  ]
  np.testing.assert_allclose(out.restored, np.mean(passes, 0), atol=1e-5)
  assert np.abs(passes[0] - passes[5]).max() > 1e-3  # the passes do differ
  # The whole ensemble commutes with the transforms, its keep maps too.
  for t in (1, 2, 6):
    turned = ensemble.deblur_batch(np.ascontiguousarray(ens.dihedral(x, t)))
    np.testing.assert_allclose(ens.undo_dihedral(turned.restored, t), out.restored, atol=1e-5)
    for block, a, b in zip(ensemble.blocks, turned.decisions, out.decisions):
      np.testing.assert_allclose(ens.undo_dihedral_windows(a, t, block.shifted), b)
  assert np.isnan(out.flops) or out.flops > 0
  fixed = Deblurrer(
    deblurrer.model.clone(capacity=0.5), deblurrer.params, InferenceSettings(self_ensemble=2)
  )
  single = Deblurrer(deblurrer.model.clone(capacity=0.5), deblurrer.params)
  # Both passes counted (XLA counts a batch of two a little differently from two calls).
  np.testing.assert_allclose(fixed.flops(128, 256), 2 * single.flops(128, 256), rtol=1e-2)


def test_self_ensemble_setting_comes_from_the_checkpoint(tmp_path, deblurrer):
  from lmdvit_jax import checkpointing

  checkpointing.save_model(tmp_path, deblurrer.params, TINY)
  assert Deblurrer.from_checkpoint(tmp_path).self_ensemble == 1
  checkpointing.write_inference_settings(tmp_path, {'self_ensemble': 4})
  assert Deblurrer.from_checkpoint(tmp_path).self_ensemble == 4
  assert 'self_ensemble' not in checkpointing.read_model_kwargs(tmp_path)  # LMDViT's only
  settings = InferenceSettings(self_ensemble=1)
  assert Deblurrer.from_checkpoint(tmp_path, settings=settings).self_ensemble == 1
  assert InferenceSettings(self_ensemble='2').self_ensemble == 2
  for bad in (3, 16):
    with pytest.raises(ValueError, match='self_ensemble'):
      InferenceSettings(self_ensemble=bad)
  with pytest.raises(ValueError, match='unknown'):
    checkpointing.write_inference_settings(tmp_path, {'self_ensembel': 8})  # a typo
  (tmp_path / checkpointing.INFERENCE_FILE).write_text('{"passes": 8}')
  with pytest.raises(ValueError, match='unknown'):
    Deblurrer.from_checkpoint(tmp_path)


def test_one_settings_type_carries_every_inference_option(deblurrer):
  settings = InferenceSettings(
    capacity='0.5',
    dtype='bfloat16',
    self_ensemble='2',
    tile=256,
    max_memory=2**30,
    matmul_precision='highest',
  )
  assert settings.capacity == 0.5 and settings.self_ensemble == 2 and settings.passes == 2
  model = settings.model(deblurrer.model)
  assert model.capacity == 0.5 and model.dtype == jnp.bfloat16
  # Unset fields keep what the checkpoint records; set ones win.
  assert InferenceSettings().with_recorded({'self_ensemble': 8}).self_ensemble == 8
  assert settings.with_recorded({'self_ensemble': 8}).self_ensemble == 2
  assert settings.recorded() == {'self_ensemble': 2}
  assert InferenceSettings().model(deblurrer.model) is deblurrer.model
  for bad in (
    dict(capacity='half'),
    dict(keep_threshold=1.5),
    dict(dtype='float16'),
    dict(matmul_precision='fp64'),
    dict(max_memory=0),
  ):
    with pytest.raises(ValueError):
      InferenceSettings(**bad)
  built = Deblurrer(deblurrer.model, deblurrer.params, settings.replace(dtype=None), warmup=False)
  assert built.model.capacity == 0.5 and built.self_ensemble == 2 and built.tile == 256
  assert built.settings.tile_overlap == built.model.multiple and built.max_memory == 2**30
