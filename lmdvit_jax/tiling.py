"""Where an image sits on the model's grid: its zero-padded canvas, and, for
canvases too large for the memory budget, overlapping tiles blended with
feathered weights.

Padding. Inputs are zero-padded, centred, to multiples of the model's grid
(16 windows), as the official evaluation does (`pad_geometry`).

A photo whose padded canvas needs more memory than a budget runs as tiles of
one shape (so one compiled program serves them all), and the tiles' outputs
are blended back:

    plan = plan_tiles(1536, 2176, grid=128, tile=1024, overlap=128)
    stitch = Stitcher(plan, shifted=[False, True, ...])
    for origin in plan.origins():
      stitch.add(origin, restored_tile, decision_tiles)
    restored, decisions = stitch.result()

Geometry. Tiles start on multiples of `grid` (the model's input multiple,
16 * win_size): then every stage's window grid in a tile is a piece of the
canvas's window grid, so keep maps stitch window by window. Sizes and
overlaps are multiples of the grid too; the last tile of an axis is moved
back to end at the canvas edge (it may overlap its neighbour more).

Blending. Along each axis a tile's weight ramps linearly from 0 to 1 across
the part it shares with a neighbour (the outer `FEATHER_TRIM` of that
overlap on each side gets no weight: a tile's own border is where its
content differs most from the whole image's) and stays 1 at the canvas
border; the weights are then normalised to sum to 1 at every pixel, so the
blend needs no second pass. Keep maps are blended with the same weights,
averaged over each window's pixels: a window every covering tile kept stays
1, one they disagree on gets the share of weight that kept it (as a
self-ensemble's maps are shares of passes).

Why tiles can differ from the whole image at all: shifted windows wrap around
at the tile's border instead of the image's, information travels between
windows from block to block, and the confidence predictors' image-global
features average over the tile, not the image. The overlap keeps the first
two away from the pixels that count; `docs/tiling.md` measures how much.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import math

import numpy as np

# Share of an overlap, at each of its ends, in which the tile whose border it
# is gets no weight (see the module docstring).
FEATHER_TRIM = 0.25


@dataclasses.dataclass(frozen=True)
class PadGeometry:
  """Where an `height` x `width` image sits in its zero-padded canvas."""

  height: int
  width: int
  padded_height: int
  padded_width: int

  @property
  def top(self) -> int:
    return (self.padded_height - self.height) // 2

  @property
  def left(self) -> int:
    return (self.padded_width - self.width) // 2

  @property
  def padded_shape(self) -> tuple[int, int]:
    return self.padded_height, self.padded_width

  def pad(self, x: np.ndarray) -> np.ndarray:
    """[..., H, W, C] -> [..., Hp, Wp, C], zeros around the centred image."""
    if x.shape[-3:-1] != (self.height, self.width):
      raise ValueError(f'expected [..., {self.height}, {self.width}, C], got {x.shape}')
    out = np.zeros(x.shape[:-3] + self.padded_shape + x.shape[-1:], x.dtype)
    out[..., self.top : self.top + self.height, self.left : self.left + self.width, :] = x
    return out

  def crop(self, x: np.ndarray) -> np.ndarray:
    """[..., Hp, Wp, C] -> [..., H, W, C]: the image part of a padded array."""
    if x.shape[-3:-1] != self.padded_shape:
      raise ValueError(
        f'expected [..., {self.padded_height}, {self.padded_width}, C], got {x.shape}'
      )
    return x[..., self.top : self.top + self.height, self.left : self.left + self.width, :]

  def pad_window(self, x: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """[H, W, C] -> the [height, width, C] window at (top, left) of `pad(x)`,
    without building the padded canvas (a tile of a large photo)."""
    out = np.zeros((height, width, x.shape[-1]), np.float32)
    y0, y1 = max(top, self.top), min(top + height, self.top + self.height)
    x0, x1 = max(left, self.left), min(left + width, self.left + self.width)
    if y0 < y1 and x0 < x1:
      out[y0 - top : y1 - top, x0 - left : x1 - left] = x[
        y0 - self.top : y1 - self.top, x0 - self.left : x1 - self.left
      ]
    return out

  def valid(self) -> np.ndarray:
    """[Hp, Wp, 1] float32: 1 on image pixels, 0 on padding."""
    return self.pad(np.ones((self.height, self.width, 1), np.float32))


def pad_geometry(height: int, width: int, multiple: int) -> PadGeometry:
  """The smallest canvas with sides multiples of `multiple` that holds the image."""
  if height < 1 or width < 1:
    raise ValueError(f'image must have at least one pixel, got {height}x{width}')
  up = lambda n: int(math.ceil(n / multiple) * multiple)
  return PadGeometry(height, width, up(height), up(width))


def check_multiple(name: str, value: int, grid: int, minimum: int = 0) -> int:
  """`value` if it is an integer multiple of `grid` and at least `minimum`, else ValueError."""
  if (
    isinstance(value, (int, np.integer))
    and not isinstance(value, bool)
    and value >= minimum
    and value % grid == 0
  ):
    return int(value)
  near = ''
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    lower = max(minimum, grid * math.floor(value / grid), grid)
    near = f' (e.g. {lower} or {lower + grid})'
  at_least = f' and at least {minimum}' if minimum else ''
  raise ValueError(
    f"{name} must be a multiple of the model's grid of {grid} px "
    f'(16 x win_size){at_least}, got {value!r}{near}'
  )


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Tiles of one shape covering a canvas.

  Attributes:
    height, width: the canvas (the padded image).
    tile_height, tile_width: every tile's size.
    ys, xs: tile origins along each axis, increasing; the first is 0, the
      last ends at the canvas edge.
    overlap: the overlap asked for between neighbours (the last pair of an
      axis may overlap more).
    batch: tiles per call of the compiled program (the last call is padded).
  """

  height: int
  width: int
  tile_height: int
  tile_width: int
  ys: tuple[int, ...]
  xs: tuple[int, ...]
  overlap: int
  batch: int = 1

  def __len__(self) -> int:
    return len(self.ys) * len(self.xs)

  def origins(self) -> list[tuple[int, int]]:
    """(y, x) of every tile, row by row."""
    return [(y, x) for y in self.ys for x in self.xs]

  @property
  def pixels(self) -> int:
    """Pixels computed over all tiles (the canvas's, plus the overlaps)."""
    return len(self) * self.tile_height * self.tile_width

  def describe(self) -> str:
    return (
      f'{len(self)} tiles of {self.tile_height}x{self.tile_width} '
      f'({len(self.ys)}x{len(self.xs)}, overlap {self.overlap}, {self.batch} per call)'
    )


def axis_origins(size: int, tile: int, overlap: int) -> tuple[int, ...]:
  """Origins of tiles of `tile` pixels, `overlap` apart, covering [0, size)."""
  if tile >= size:
    return (0,)
  stride = tile - overlap
  count = -(-(size - tile) // stride) + 1
  return tuple(min(i * stride, size - tile) for i in range(count))


def plan_tiles(
  height: int, width: int, grid: int, tile: int, overlap: int, batch: int = 1
) -> TilePlan:
  """Square tiles of `tile` pixels (clipped to the canvas) over a canvas.

  Raises:
    ValueError: a size that is not a multiple of `grid`, or an overlap not
      smaller than the tile.
  """
  check_multiple('canvas height', height, grid, grid)
  check_multiple('canvas width', width, grid, grid)
  check_multiple('tile', tile, grid, grid)
  check_multiple('tile_overlap', overlap, grid)
  if overlap >= tile:
    raise ValueError(f'tile_overlap ({overlap}) must be smaller than the tile ({tile})')
  th, tw = min(tile, height), min(tile, width)
  return TilePlan(
    height,
    width,
    th,
    tw,
    axis_origins(height, th, overlap),
    axis_origins(width, tw, overlap),
    overlap,
    batch,
  )


def _axis_choices(size: int, grid: int, overlap: int) -> list[tuple[int, tuple[int, ...]]]:
  """(tile size, origins) for every useful tile count along one axis."""
  out: dict[int, tuple[int, ...]] = {}
  for count in range(1, size // grid + 1):
    tile = grid * -(-(size + (count - 1) * overlap) // (count * grid))
    # One tile spans the axis and overlaps nothing, however narrow the axis.
    if tile > size or (count > 1 and tile <= overlap):
      continue
    out.setdefault(tile, axis_origins(size, tile, overlap))
  return sorted(out.items())


def smallest_tile(height: int, width: int, grid: int, overlap: int) -> tuple[int, int]:
  """The smallest tile `auto_plan` can use on a canvas: per axis, the overlap
  plus one grid cell, or the whole axis where it is no longer than that."""
  return min(height, overlap + grid), min(width, overlap + grid)


def auto_plan(height: int, width: int, grid: int, overlap: int, max_pixels: float) -> TilePlan:
  """The rectangular tiling of a canvas that computes the fewest pixels with
  tiles of at most `max_pixels` (ties: fewer tiles).

  Raises:
    ValueError: not even the smallest tile fits (`overlap + grid` along an
      axis that needs several tiles, the axis itself along one that does not).
  """
  best = None
  for th, ys in _axis_choices(height, grid, overlap):
    for tw, xs in _axis_choices(width, grid, overlap):
      if th * tw > max_pixels:
        continue
      key = (len(ys) * th * len(xs) * tw, len(ys) * len(xs))
      if best is None or key < best[0]:
        best = (key, TilePlan(height, width, th, tw, ys, xs, overlap))
  if best is None:
    th, tw = smallest_tile(height, width, grid, overlap)
    raise ValueError(
      f'the memory budget allows tiles of {int(max_pixels)} pixels, less than '
      f'the smallest tile ({th}x{tw}: the overlap plus one grid cell, or the '
      'side itself where it is that narrow): raise max_memory or lower '
      'tile_overlap'
    )
  return best[1]


def feather(
  size: int, origins: Sequence[int], tile: int, trim: float | None = None
) -> list[np.ndarray]:
  """Blending weights along one axis: per tile `[tile]` float32, summing to 1
  over the tiles at every position of [0, size); `trim` defaults to `FEATHER_TRIM`."""
  trim = FEATHER_TRIM if trim is None else trim
  t = np.arange(tile, dtype=np.float64) + 0.5
  raw = []
  for i, o in enumerate(origins):
    w = np.ones(tile)
    if i > 0:  # shared with the previous tile: [o, previous end)
      shared = origins[i - 1] + tile - o
      margin = trim * shared
      w = np.minimum(w, np.clip((t - margin) / max(shared - 2 * margin, 1e-9), 0, 1))
    if i + 1 < len(origins):  # shared with the next tile: [next origin, o + tile)
      shared = o + tile - origins[i + 1]
      margin = trim * shared
      w = np.minimum(w, np.clip((tile - t - margin) / max(shared - 2 * margin, 1e-9), 0, 1))
    raw.append(w)
  total = np.zeros(size)
  for o, w in zip(origins, raw):
    total[o : o + tile] += w
  if not np.all(total > 0):
    raise ValueError(f'tiles at {list(origins)} of {tile} px leave part of {size} px unweighted')
  return [(w / total[o : o + tile]).astype(np.float32) for o, w in zip(origins, raw)]


def window_weights(profile: np.ndarray, window: int, shifted: bool) -> np.ndarray:
  """A tile's pixel weights along one axis -> the mean weight of each window of
  a block's grid (`window` pixels; a shifted grid starts half a window in)."""
  if shifted:
    profile = np.roll(profile, -(window // 2))
  return profile.reshape(-1, window).mean(axis=1)


class Stitcher:
  """Accumulates tiles' outputs into canvas-sized results.

  Args:
    plan: the tiles.
    shifted: per keep map (network order), whether its block's grid is shifted.
    channels: channels of the restored image.
  """

  def __init__(self, plan: TilePlan, shifted: Sequence[bool], channels: int = 3):
    self.plan = plan
    self.shifted = tuple(shifted)
    self.wy = dict(zip(plan.ys, feather(plan.height, plan.ys, plan.tile_height)))
    self.wx = dict(zip(plan.xs, feather(plan.width, plan.xs, plan.tile_width)))
    self.restored = np.zeros((plan.height, plan.width, channels), np.float32)
    self._kept: list[np.ndarray] = []
    self._weight: list[np.ndarray] = []

  def add(
    self, origin: tuple[int, int], restored: np.ndarray, decisions: Sequence[np.ndarray]
  ) -> None:
    """Adds one tile at `origin` (y, x): `restored` [th, tw, C] and its keep
    maps, per block [th / window, tw / window]."""
    y, x = origin
    p = self.plan
    wy, wx = self.wy[y], self.wx[x]
    self.restored[y : y + p.tile_height, x : x + p.tile_width] += (
      wy[:, None, None] * wx[None, :, None] * restored
    )
    if len(decisions) != len(self.shifted):
      raise ValueError(f'expected {len(self.shifted)} keep maps, got {len(decisions)}')
    for k, (d, shifted) in enumerate(zip(decisions, self.shifted)):
      window = p.tile_height // d.shape[0]
      if d.shape[0] * window != p.tile_height or d.shape[1] * window != p.tile_width:
        raise ValueError(
          f'keep map {d.shape} is not a window grid of a {p.tile_height}x{p.tile_width} tile'
        )
      if len(self._kept) <= k:
        shape = (p.height // window, p.width // window)
        self._kept.append(np.zeros(shape, np.float32))
        self._weight.append(np.zeros(shape, np.float32))
      w = np.outer(window_weights(wy, window, shifted), window_weights(wx, window, shifted))
      gy, gx = y // window, x // window
      self._kept[k][gy : gy + d.shape[0], gx : gx + d.shape[1]] += w * d
      self._weight[k][gy : gy + d.shape[0], gx : gx + d.shape[1]] += w

  def result(self) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The blended canvas [H, W, C] and keep maps (float32 shares in [0, 1])."""
    maps = tuple(
      np.divide(k, w, out=np.zeros_like(k), where=w > 0) for k, w in zip(self._kept, self._weight)
    )
    return self.restored, maps


# A tile progress bar appears once an image has taken this long (seconds).
PROGRESS_DELAY = 3.0


def run_tiles(
  run: Callable[[np.ndarray], tuple],
  image: np.ndarray,
  geometry: PadGeometry,
  plan: TilePlan,
  shifted: Sequence[bool],
  progress: bool = False,
) -> tuple:
  """One image [H, W, 3] as the tiles of `plan`, blended.

  `run(x)` deblurs a batch of tiles `x` [plan.batch, th, tw, 3] (a short last
  batch is padded) and returns (restored, keep maps, dropped counts, seconds,
  FLOPs) as `inference.Deblurrer` does; `shifted` says which keep maps come
  from shifted grids.

  Returns:
    (restored canvas [Hp, Wp, 3], blended keep maps, dropped counts summed
    over the tiles, seconds, FLOPs).
  """
  from tqdm import tqdm

  stitch = Stitcher(plan, shifted)
  origins, n = plan.origins(), plan.batch
  th, tw = plan.tile_height, plan.tile_width
  dropped, seconds, flops = np.zeros(len(shifted), np.int64), 0.0, 0.0
  with tqdm(
    total=len(origins),
    desc='tiles',
    unit='tile',
    leave=False,
    delay=PROGRESS_DELAY,
    disable=not progress,
  ) as bar:
    for start in range(0, len(origins), n):
      part = origins[start : start + n]
      x = np.zeros((n, th, tw, 3), np.float32)  # a short last batch is padded
      for j, (y, left) in enumerate(part):
        x[j] = geometry.pad_window(image, y, left, th, tw)
      restored, decisions, drops, s, f = run(x)
      for j, origin in enumerate(part):
        stitch.add(origin, restored[j], [d[j] for d in decisions])
      dropped += np.array([np.sum(d[: len(part)]) for d in drops], np.int64)
      seconds, flops = seconds + s, flops + f
      bar.update(len(part))
  restored, maps = stitch.result()
  return restored, maps, tuple(dropped), seconds, flops
