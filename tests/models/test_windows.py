import numpy as np

from lmdvit_jax.models import windows as win


def test_partition_reverse_round_trip_and_order():
  x = np.arange(2 * 16 * 24 * 3).reshape(2, 16, 24, 3).astype(np.float32)
  w = win.partition(x, 8)
  assert w.shape == (2, 6, 8, 8, 3)
  # Window 4 of image 1 is grid row 1, column 1 (row-major over a 2x3 grid).
  np.testing.assert_array_equal(w[1, 4], x[1, 8:16, 8:16])
  np.testing.assert_array_equal(win.reverse(w, 8, 16, 24), x)


def test_shift_region_ids_match_swin_mask():
  for h, w, ws, s in ((16, 24, 8, 4), (8, 8, 8, 4), (12, 20, 4, 2)):
    gh, gw = h // ws, w // ws
    ids = np.asarray(win.shift_region_ids(np.arange(gh * gw), gh, gw, ws, s))

    # Brute force: label every pixel of the rolled map by its 3x3 region.
    def region(i, n, ws=ws, s=s):
      return 0 if i < n - ws else (1 if i < n - s else 2)

    labels = np.array([[region(i, h) * 3 + region(j, w) for j in range(w)] for i in range(h)])
    expected = win.partition(labels[None, :, :, None], ws).reshape(-1, ws * ws)
    np.testing.assert_array_equal(ids, expected)
    # Any index array: the same labels, window by window.
    picked = np.array([[gh * gw - 1, 0], [gw - 1, gh * gw - gw]])
    np.testing.assert_array_equal(
      np.asarray(win.shift_region_ids(picked, gh, gw, ws, s)), expected[picked]
    )
  # Only the last window row and column mix regions.
  assert len(np.unique(ids[0])) == 1 and len(np.unique(ids[-1])) == 4


def test_relative_position_index():
  idx = win.relative_position_index(3)
  assert idx.shape == (9, 9) and idx.min() == 0 and idx.max() == 24
  assert np.all(np.diag(idx) == 12)  # zero offset is the centre of the 5x5 table
  # Token 0 at (0, 0), token 8 at (2, 2): offset (-2, -2) -> (0, 0) -> 0.
  assert idx[0, 8] == 0 and idx[8, 0] == 24


def test_window_mean():
  x = np.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(
    np.asarray(win.window_mean(x, 2))[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]]
  )
