"""Tiled inference: tile geometry, feathered blending, stitched keep maps, and
`Deblurrer` choosing and running tiles."""

import jax
import numpy as np
import pytest

from lmdvit_jax import programs, tiling
from lmdvit_jax.errors import OutOfMemoryError
from lmdvit_jax.inference import Deblurrer
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import LMDViT, init_params
from tests.helpers import TINY

GRID = 128  # TINY: win_size 8


# ---------------------------------------------------------------------------
# Geometry (no model).


@pytest.mark.parametrize(
  'size, tile, overlap',
  [(640, 256, 128), (384, 256, 0), (1536, 1024, 256), (128, 256, 128), (1152, 384, 256)],
)
def test_axis_origins_cover_the_axis_on_the_grid(size, tile, overlap):
  origins = tiling.axis_origins(size, tile, overlap)
  tile = min(tile, size)
  assert origins[0] == 0 and origins[-1] == size - tile
  assert all(o % GRID == 0 for o in origins)
  assert all(b - a <= tile - overlap for a, b in zip(origins, origins[1:]))  # no gaps
  covered = np.zeros(size, bool)
  for o in origins:
    covered[o : o + tile] = True
  assert covered.all()


def test_plan_rejects_sizes_off_the_grid():
  with pytest.raises(ValueError, match='multiple of the model.s grid of 128 px.*e.g. 256 or 384'):
    tiling.plan_tiles(512, 512, GRID, 300, 128)
  with pytest.raises(ValueError, match='tile_overlap'):
    tiling.plan_tiles(512, 512, GRID, 256, 100)
  with pytest.raises(ValueError, match='smaller than the tile'):
    tiling.plan_tiles(512, 512, GRID, 256, 256)


@pytest.mark.parametrize('trim', [0.0, 0.25, 0.45])
def test_feather_weights_sum_to_one_and_stay_one_at_the_canvas_border(trim):
  size, tile = 896, 384
  origins = tiling.axis_origins(size, tile, 128)
  weights = tiling.feather(size, origins, tile, trim)
  total = np.zeros(size)
  for o, w in zip(origins, weights):
    total[o : o + tile] += w
  np.testing.assert_allclose(total, 1.0, rtol=1e-6)
  assert weights[0][0] == 1 and weights[-1][-1] == 1
  # Inside an overlap the tile whose border it is fades out; with a trim its
  # last pixels get no weight at all.
  assert weights[0][-1] < 0.05
  if trim:
    assert weights[0][-1] == 0 and weights[1][0] == 0


def test_auto_plan_computes_fewest_pixels_within_the_budget():
  plan = tiling.auto_plan(3072, 4096, GRID, 128, max_pixels=2.0e6)
  assert plan.tile_height * plan.tile_width <= 2.0e6
  # Against every square tile that fits, it computes no more pixels.
  for side in range(256, 1409, 128):
    square = tiling.plan_tiles(3072, 4096, GRID, side, 128)
    assert plan.pixels <= square.pixels
  assert plan.pixels / (3072 * 4096) < 1.25
  # A canvas that fits runs as one tile.
  assert len(tiling.auto_plan(512, 512, GRID, 128, 1e6)) == 1
  with pytest.raises(ValueError, match='smallest tile \\(256x256'):
    tiling.auto_plan(1024, 1024, GRID, 128, max_pixels=50_000)


@pytest.mark.parametrize('shifted', [False, True])
def test_stitched_maps_equal_the_canvas_map_the_tiles_were_cut_from(shifted):
  """Tiles that agree on every window stitch back to exactly that map, on
  unshifted and shifted grids and at every stage's window size."""
  plan = tiling.plan_tiles(640, 896, GRID, 384, 128)
  rng = np.random.default_rng(0)
  windows = (8, 32, 128)  # full resolution, 1/4 and 1/16 of a win_size-8 model
  canvas_maps = [rng.integers(0, 2, (640 // w, 896 // w)).astype(np.uint8) for w in windows]
  image = rng.uniform(size=(640, 896, 3)).astype(np.float32)
  stitch = tiling.Stitcher(plan, [shifted] * len(windows))
  for y, x in plan.origins():
    tile_maps = [
      m[y // w : (y + plan.tile_height) // w, x // w : (x + plan.tile_width) // w]
      for m, w in zip(canvas_maps, windows)
    ]
    stitch.add((y, x), image[y : y + plan.tile_height, x : x + plan.tile_width], tile_maps)
  restored, maps = stitch.result()
  np.testing.assert_allclose(restored, image, rtol=1e-5)
  for got, want in zip(maps, canvas_maps):
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_tiles_that_disagree_give_the_share_of_weight_that_kept_a_window():
  plan = tiling.plan_tiles(128, 384, GRID, 256, 128)  # two tiles along x, overlap [128, 256)
  stitch = tiling.Stitcher(plan, [False])
  for (y, x), keep in zip(plan.origins(), (1, 0)):
    stitch.add((y, x), np.zeros((128, 256, 3), np.float32), [np.full((16, 32), keep, np.uint8)])
  _, (kept,) = stitch.result()
  row = kept[0]
  assert np.all(row[:16] == 1) and np.all(row[32:] == 0)  # covered by one tile only
  assert np.all(np.diff(row[16:32]) <= 0) and 0 < row[24] < 1  # fades across the overlap


# ---------------------------------------------------------------------------
# Deblurrer with tiles (tiny model, random params).


@pytest.fixture(scope='module')
def model_params():
  model = LMDViT(**{**TINY, 'capacity': 'exact'})
  return model, init_params(model, 0)


@pytest.fixture(scope='module')
def image():
  return np.random.default_rng(1).uniform(size=(300, 500, 3)).astype(np.float32)


def test_forced_tiles_agree_with_the_whole_image(model_params, image):
  model, params = model_params
  whole = Deblurrer(model, params, InferenceSettings(tile=0), warmup=False)(image)
  before = set(programs._EXECUTABLES)
  tiled = Deblurrer(model, params, InferenceSettings(tile=256), warmup=False)(image)
  assert whole.tiles is None
  assert tiled.tiles is not None and len(tiled.tiles) == 6  # 384x512 canvas: 2 x 3 tiles
  # One program for every tile (all batched in one call here).
  new = set(programs._EXECUTABLES) - before
  assert {k[1] for k in new} <= {(6, 256, 256, 3), (1, 256, 256, 3)}
  assert tiled.restored.shape == whole.restored.shape == image.shape
  mse = np.mean((tiled.restored - whole.restored) ** 2)
  assert 10 * np.log10(1 / mse) > 45
  for a, b in zip(tiled.decisions, whole.decisions):
    assert a.shape == b.shape and a.min() >= 0 and a.max() <= 1
  assert len(tiled.kept_maps()) == len(whole.blocks)


def test_a_network_without_pruning_tiles_too(image):
  dense = LMDViT(**{**TINY, 'prune_loc': (0,) * 9, 'capacity': 1.0})
  params = init_params(dense, 0)
  whole = Deblurrer(dense, params, InferenceSettings(tile=0), warmup=False)(image)
  tiled = Deblurrer(dense, params, InferenceSettings(tile=256), warmup=False)(image)
  assert tiled.decisions == () and tiled.dropped == ()
  assert 10 * np.log10(1 / np.mean((tiled.restored - whole.restored) ** 2)) > 45


def test_memory_budget_chooses_tiles_and_a_short_last_batch_is_padded(model_params, image):
  model, params = model_params
  roomy = Deblurrer(model, params, warmup=False)
  assert roomy.plan(300, 500) is None  # the default budget holds this image whole
  tight = Deblurrer(model, params, InferenceSettings(max_memory=60e6), warmup=False)
  plan = tight.plan(300, 500)
  assert plan is not None and len(plan) > 1
  # Explicit tiles in batches of 4: 6 tiles run as a batch of 4 and a padded one.
  per_pixel = tight._bytes_per_pixel(256, 256)
  budget = int(tight._params_bytes + 4.5 * per_pixel * 256 * 256)
  batched = Deblurrer(model, params, InferenceSettings(tile=256, max_memory=budget), warmup=False)
  assert batched.plan(300, 500).batch == 4
  single = Deblurrer(
    model, params, InferenceSettings(tile=256, max_memory=tight._params_bytes + 1), warmup=False
  )
  assert single.plan(300, 500).batch == 1
  np.testing.assert_allclose(batched(image).restored, single(image).restored, atol=1e-5)


def test_bad_tiling_settings_fail_with_one_clear_message(model_params):
  model, params = model_params
  with pytest.raises(ValueError, match='tile must be a multiple'):
    Deblurrer(model, params, InferenceSettings(tile=200))
  with pytest.raises(ValueError, match='tile_overlap must be a multiple'):
    Deblurrer(model, params, InferenceSettings(tile_overlap=64))
  with pytest.raises(ValueError, match='smaller than the tile'):
    Deblurrer(model, params, InferenceSettings(tile=256, tile_overlap=256))
  with pytest.raises(ValueError, match='max_memory must be positive'):
    Deblurrer(model, params, InferenceSettings(max_memory=0))
  with pytest.raises(ValueError, match='less than the params'):
    Deblurrer(model, params, InferenceSettings(max_memory=2e6))


def test_running_out_of_memory_names_the_size_and_the_remedy(model_params, image, monkeypatch):
  model, params = model_params
  deblurrer = Deblurrer(model, params, InferenceSettings(tile=256), warmup=False)

  def exhausted(*args, **kwargs):
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB')

  monkeypatch.setattr(deblurrer, '_run', exhausted)
  with pytest.raises(OutOfMemoryError, match='300x500 .*6 tiles of 256x256.*smaller --tile'):
    deblurrer(image)


@pytest.mark.parametrize('height,width', [(5120, 128), (128, 6016), (128, 128), (128, 256)])
def test_any_shape_plans_down_to_one_grid_cell_across(height, width):
  """An axis of one grid cell (a 5000x40 photo) runs as one tile along it;
  the long axis is split within the budget."""
  plan = tiling.auto_plan(height, width, GRID, 128, max_pixels=179_682)
  assert plan.tile_height * plan.tile_width <= 179_682
  assert plan.ys[-1] + plan.tile_height == height and plan.xs[-1] + plan.tile_width == width
  short = min(height, width)
  assert min(plan.tile_height, plan.tile_width) == short
  assert tiling.smallest_tile(5120, 128, GRID, 128) == (256, 128)
