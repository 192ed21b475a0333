"""Full-image inference: pad to the window grid, run the compiled model, crop back.

`Deblurrer` holds a model and its params and deblurs images of any size:

    deblurrer = Deblurrer.from_checkpoint('ckpt/lmdvit')
    result = deblurrer(blurred)          # blurred: [H, W, 3] float in [0, 1] or uint8
    result.restored                      # [H, W, 3] float32 in [0, 1]
    result.decisions, result.blocks      # keep maps over the padded window grid
    result.seconds, result.flops         # run time (compilation excluded), XLA FLOPs

Inputs are zero-padded, centred, to multiples of `model.multiple` (16 windows),
as the official evaluation does. One XLA executable is compiled per
(model, padded batch shape) and kept for the life of the process, so images of
equal padded size (ReLoBlur: all of them) compile once; params are arguments of
the executable, never baked in as constants.

`self_ensemble=N` (2, 4 or 8) runs the model on N flipped and transposed copies
of each image and averages the outputs (a geometric self-ensemble: N times the
work, less noise in the restoration); a checkpoint's inference.json may record it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lmdvit_jax import metrics, tiling
from lmdvit_jax.errors import OutOfMemoryError
from lmdvit_jax.models import LMDViT, pruning
from lmdvit_jax.models.pruning import DecisionBlock, parse_capacity  # pylint: disable=unused-import
from lmdvit_jax.models.lmdvit import COMPUTE_DTYPES, STAGE_NAMES

# ----------------------------------------------------------------------------
# Padding geometry (pure numpy, no model needed).


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
    out[..., self.top:self.top + self.height, self.left:self.left + self.width, :] = x
    return out

  def crop(self, x: np.ndarray) -> np.ndarray:
    """[..., Hp, Wp, C] -> [..., H, W, C]: the image part of a padded array."""
    if x.shape[-3:-1] != self.padded_shape:
      raise ValueError(f'expected [..., {self.padded_height}, {self.padded_width}, C], '
                       f'got {x.shape}')
    return x[..., self.top:self.top + self.height, self.left:self.left + self.width, :]

  def valid(self) -> np.ndarray:
    """[Hp, Wp, 1] float32: 1 on image pixels, 0 on padding."""
    return self.pad(np.ones((self.height, self.width, 1), np.float32))


def pad_geometry(height: int, width: int, multiple: int) -> PadGeometry:
  """The smallest canvas with sides multiples of `multiple` that holds the image."""
  if height < 1 or width < 1:
    raise ValueError(f'image must have at least one pixel, got {height}x{width}')
  up = lambda n: int(math.ceil(n / multiple) * multiple)
  return PadGeometry(height, width, up(height), up(width))


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 / uint16 / float image -> float32 in [0, 1] (integers by their full scale)."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  if image.dtype == np.uint16:
    return image.astype(np.float32) / 65535.0
  if not np.issubdtype(image.dtype, np.floating):
    raise TypeError(f'expected uint8, uint16 or float images, got {image.dtype}')
  if not np.isfinite(image).all():
    # NaN would spread through every window's attention and LayerNorm, and a
    # pruned-everything decision map would hide where it came from.
    bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
    raise ValueError(f'image holds {bad} non-finite value(s) (NaN or inf); replace them first')
  return image.astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """float image -> uint8 as the official code saves it: clamp, * 255, round."""
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def quantize(image: np.ndarray) -> np.ndarray:
  """float image -> the float32 values its uint8 file would hold (k / 255)."""
  return to_uint8(image).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------
# Which block each decision map comes from.


def decision_blocks(model: LMDViT) -> tuple[DecisionBlock, ...]:
  """The predicting blocks of `model` in the order of `LMDViTOutput.decisions`."""
  return pruning.decision_blocks(STAGE_NAMES, model.depths, model.prune_loc)


# ----------------------------------------------------------------------------
# Compiled forward passes, shared by every Deblurrer of the process.


def _forward(model: LMDViT, params: Any, x: jax.Array):
  out = model.apply({'params': params}, x, train=False)
  # Scores and gate are large and unused here: leaving them out of the outputs
  # lets XLA skip materialising them.
  return jnp.clip(out.restored, 0.0, 1.0), out.decisions, out.dropped


_EXECUTABLES: dict[tuple[LMDViT, tuple[int, ...]], jax.stages.Compiled] = {}
_LOCK = threading.Lock()


def compiled_forward(model: LMDViT, params: Any,
                     shape: tuple[int, int, int, int]) -> jax.stages.Compiled:
  """The executable of `model` for float32 inputs of `shape` [B, Hp, Wp, 3].

  Cached per (model attributes, shape) for the process; `params` only supply
  their shapes and dtypes.
  """
  key = (model, tuple(int(s) for s in shape))
  with _LOCK:
    if key not in _EXECUTABLES:
      x = jax.ShapeDtypeStruct(key[1], jnp.float32)
      p = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
      fn = jax.jit(_forward, static_argnums=0)
      _EXECUTABLES[key] = fn.lower(model, p, x).compile()
    return _EXECUTABLES[key]


def compiled_flops(executable: jax.stages.Compiled) -> float:
  """FLOPs of one call from XLA's cost analysis (NaN if the backend has none).

  XLA counts a while loop's body once, whatever its trip count: for a model
  with `capacity='exact'` this is one chunk per pruned block, not the windows
  the call runs (`Deblurrer` reports NaN there). A fixed float capacity counts
  exactly that budget.
  """
  cost = executable.cost_analysis()
  if isinstance(cost, Sequence):  # Older jax: one dict per device program.
    cost = cost[0] if cost else {}
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def compiled_memory(executable: jax.stages.Compiled) -> int | None:
  """Bytes one call of `executable` holds at once: arguments (params included),
  outputs and XLA's temporaries; None where the backend does not say."""
  try:
    m = executable.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


# The CPU default of `max_memory`: with it a 24-megapixel photo deblurs in
# under 6 GB of resident memory (docs/tiling.md).
HOST_MEMORY_BUDGET = 3 * 2**30


def default_max_memory(device: jax.Device | None = None) -> int:
  """The memory one compiled call may use by default: on a CPU, 3 GiB or a
  quarter of the machine's memory if that is less; on an accelerator, 80% of
  its free memory."""
  device = device or jax.devices()[0]
  if device.platform == 'cpu':
    try:
      total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
      return HOST_MEMORY_BUDGET
    return min(HOST_MEMORY_BUDGET, total // 4)
  stats = device.memory_stats() or {}
  if 'bytes_limit' not in stats:
    return HOST_MEMORY_BUDGET
  return int(0.8 * (stats['bytes_limit'] - stats.get('bytes_in_use', 0)))


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` is a device or host allocation failure."""
  return isinstance(error, MemoryError) or (
      isinstance(error, jax.errors.JaxRuntimeError) and 'RESOURCE_EXHAUSTED' in str(error))


# ----------------------------------------------------------------------------
# Self-ensemble: the eight flips and transposes of the image plane.

SELF_ENSEMBLES = (1, 2, 4, 8)


def dihedral(x: np.ndarray, t: int) -> np.ndarray:
  """Transform `t` (0-7) of `x` [N, H, W, ...]: bit 0 flips W, bit 1 flips H,
  then bit 2 swaps H and W. Transforms 0-3 keep the shape, 4-7 transpose it."""
  if t & 1:
    x = x[:, :, ::-1]
  if t & 2:
    x = x[:, ::-1]
  if t & 4:
    x = np.swapaxes(x, 1, 2)
  return x


def undo_dihedral(x: np.ndarray, t: int) -> np.ndarray:
  """The inverse of `dihedral(., t)`."""
  if t & 4:
    x = np.swapaxes(x, 1, 2)
  if t & 2:
    x = x[:, ::-1]
  if t & 1:
    x = x[:, :, ::-1]
  return x


def undo_dihedral_windows(decision: np.ndarray, t: int, shifted: bool) -> np.ndarray:
  """`undo_dihedral` of a keep map [N, gh, gw] over the window grid of a pass
  on `dihedral(image, t)`.

  A shifted grid's windows start half a window in; mirrored, they end half a
  window from the other side, which is the same grid one window further on
  (win_size is even): so a flip of a shifted map is also rolled by one window.
  """
  roll = -1 if shifted else 0
  if t & 4:
    decision = np.swapaxes(decision, 1, 2)
  if t & 2:
    decision = np.roll(decision[:, ::-1], roll, axis=1)
  if t & 1:
    decision = np.roll(decision[:, :, ::-1], roll, axis=2)
  return decision


def checkpoint_overrides(capacity: str | float = 'exact', keep_threshold: float | None = None,
                         dtype: str | None = None,
                         self_ensemble: int | None = None) -> dict[str, Any]:
  """What evaluate and deblur change in a checkpoint's model.json and
  inference.json; None keeps the recorded value (the default where it records
  none)."""
  overrides: dict[str, Any] = {'capacity': parse_capacity(capacity)}
  if keep_threshold is not None:
    overrides['keep_threshold'] = float(keep_threshold)
  if dtype is not None:
    overrides['dtype'] = dtype
  if self_ensemble is not None:
    if self_ensemble not in SELF_ENSEMBLES:
      raise ValueError(f'self_ensemble must be one of {SELF_ENSEMBLES}, got {self_ensemble!r}')
    overrides['self_ensemble'] = int(self_ensemble)
  return overrides


# ----------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class BatchResult:
  """Output of `Deblurrer.deblur_batch` for B images of one size.

  Attributes:
    restored: [B, H, W, 3] float32 in [0, 1].
    decisions: per predicting block, [B, gh, gw] keep maps over the window
      grid of the PADDED canvas (see `geometry`; `blocks` says which block and
      whether its grid is shifted): uint8 in {0, 1} for one whole-image pass;
      float32 shares in [0, 1] for a self-ensemble (of passes that kept each
      window) or tiles (of blending weight that kept it, see `tiling`).
    dropped: per predicting block, [B] kept windows a fixed capacity dropped
      (summed over the passes of a self-ensemble and over tiles).
    blocks: the predicting blocks, in the order of `decisions`.
    geometry: where the images sit in the padded canvas.
    seconds: wall time of the call, all passes and tiles (compilation excluded).
    flops: XLA FLOPs of the call, all passes and tiles (see `compiled_flops`);
      NaN in `'exact'` mode, whose loop trip counts are known only at run time.
    tiles: the tiles each image ran as, None when it ran whole.
  """

  restored: np.ndarray
  decisions: tuple[np.ndarray, ...]
  dropped: tuple[np.ndarray, ...]
  blocks: tuple[DecisionBlock, ...]
  geometry: PadGeometry
  seconds: float
  flops: float
  tiles: tiling.TilePlan | None = None

  def __len__(self) -> int:
    return self.restored.shape[0]

  def __getitem__(self, i: int) -> 'DeblurResult':
    n = len(self)
    return DeblurResult(
        restored=self.restored[i], decisions=tuple(d[i] for d in self.decisions),
        dropped=tuple(int(d[i]) for d in self.dropped), blocks=self.blocks,
        geometry=self.geometry, seconds=self.seconds / n, flops=self.flops / n,
        tiles=self.tiles)


@dataclasses.dataclass
class DeblurResult:
  """One image: as `BatchResult` without the batch axis; seconds and FLOPs per image."""

  restored: np.ndarray
  decisions: tuple[np.ndarray, ...]
  dropped: tuple[int, ...]
  blocks: tuple[DecisionBlock, ...]
  geometry: PadGeometry
  seconds: float
  flops: float
  tiles: tiling.TilePlan | None = None

  def kept_maps(self) -> list[np.ndarray]:
    """Per predicting block, [H, W] bool: pixels whose window the block kept
    (in any pass of a self-ensemble, in any tile covering it).

    Up-sampled on the padded canvas (shifted grids rolled back onto the image
    content) and cropped to the image.
    """
    g = self.geometry
    return [g.crop(np.asarray(metrics.upsample_decision(
        d > 0, g.padded_height, g.padded_width, b.shifted))[:, :, None])[:, :, 0]
            for d, b in zip(self.decisions, self.blocks)]


# ----------------------------------------------------------------------------
# The deblurrer.

# Side of the canvas (in grid cells) whose compiled program measures the
# memory per pixel: memory grows linearly with the pixels (one probe at
# 256x256 and at 4096x6016 agree within 0.1%), so a larger one adds nothing.
PROBE_CELLS = 16
# A tile progress bar appears once an image has taken this long (seconds).
PROGRESS_DELAY = 3.0


class Deblurrer:
  """Deblurs images of any size with one model and its params.

  An image whose padded canvas would need more than `max_memory` runs as
  overlapping tiles (see `tiling`), in batches of one compiled program, and
  the tiles are blended back; memory then depends on the tile, not the photo.

  Attributes:
    model: the `LMDViT` module (its capacity and threshold are used as set).
    params: the params pytree, on the default device.
    warmup: run each new executable once untimed before the first timed call,
      as the official script does (first calls pay for allocation).
    self_ensemble: passes per image, one of `SELF_ENSEMBLES`: the model runs on
      `dihedral(image, t)` for t < self_ensemble (1: the image alone; 2: and
      its mirror image; 4: all flips; 8: flips and transposes), and the
      outputs, turned back, are averaged.
    tile: None (default): tiles only when the whole canvas would need more
      than `max_memory`, as large as it allows; 0: always the whole image;
      N: square tiles of N pixels (a multiple of `model.multiple`).
    tile_overlap: pixels shared by neighbouring tiles (a multiple of
      `model.multiple`; default one grid cell).
    max_memory: bytes one compiled call may use (default `default_max_memory`).
    progress: show a progress bar over the tiles of images that take a while.
  """

  def __init__(self, model: LMDViT, params: Any, warmup: bool = True, self_ensemble: int = 1,
               *, tile: int | None = None, tile_overlap: int | None = None,
               max_memory: int | None = None, progress: bool = False):
    model.check_config()
    if self_ensemble not in SELF_ENSEMBLES:
      raise ValueError(f'self_ensemble must be one of {SELF_ENSEMBLES}, got {self_ensemble!r}')
    grid = model.multiple
    if tile is not None and tile != 0:
      tiling.check_multiple('tile', tile, grid, grid)
    overlap = grid if tile_overlap is None else tiling.check_multiple(
        'tile_overlap', tile_overlap, grid)
    if tile and overlap >= tile:
      raise ValueError(f'tile_overlap ({overlap}) must be smaller than the tile ({tile})')
    if max_memory is not None and max_memory <= 0:
      raise ValueError(f'max_memory must be positive, got {max_memory}')
    self.model = model
    self.params = jax.device_put(params)
    self.warmup = warmup
    self.self_ensemble = int(self_ensemble)
    self.tile = None if tile is None else int(tile)
    self.tile_overlap = overlap
    self.max_memory = default_max_memory() if max_memory is None else int(max_memory)
    self.progress = progress
    self._params_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(self.params))
    self._warm: set[tuple[int, ...]] = set()

  @classmethod
  def from_kwargs(cls, kwargs: Mapping[str, Any], params: Any, warmup: bool = True,
                  **options: Any) -> 'Deblurrer':
    """From `LMDViT`'s keyword arguments (a `dtype` by name) and, among them,
    `self_ensemble`, which sets up inference around the model; `options` are
    the other arguments of `Deblurrer` (tiling, progress)."""
    kwargs = dict(kwargs)
    self_ensemble = int(kwargs.pop('self_ensemble', 1))
    dtype = kwargs.get('dtype', 'float32')
    if isinstance(dtype, str):  # model.json and flags name it
      if dtype not in COMPUTE_DTYPES:
        raise ValueError(f'dtype must be one of {sorted(COMPUTE_DTYPES)}, got {dtype!r}')
      kwargs['dtype'] = COMPUTE_DTYPES[dtype]
    return cls(LMDViT(**kwargs), params, warmup, self_ensemble, **options)

  @classmethod
  def from_checkpoint(cls, directory: str | Path, step: int | None = None,
                      overrides: Mapping[str, Any] | None = None,
                      warmup: bool = True, **options: Any) -> 'Deblurrer':
    """Loads a checkpoint directory; `overrides` replace its model.json and
    inference.json entries (e.g. {'capacity': 'masked', 'keep_threshold': 0.6,
    'dtype': 'bfloat16', 'self_ensemble': 1}); `options` as `from_kwargs`."""
    # Imported here: orbax is only needed to read checkpoints.
    from lmdvit_jax import checkpointing  # pylint: disable=g-import-not-at-top
    kwargs, params = checkpointing.load_model(directory, step)
    settings = checkpointing.read_inference_settings(directory)
    return cls.from_kwargs({**kwargs, **settings, **(overrides or {})}, params, warmup,
                           **options)

  @property
  def blocks(self) -> tuple[DecisionBlock, ...]:
    return decision_blocks(self.model)

  def geometry(self, height: int, width: int) -> PadGeometry:
    return pad_geometry(height, width, self.model.multiple)

  def _pass_groups(self) -> list[tuple[int, ...]]:
    """The self-ensemble's transforms, grouped by output shape (plain, transposed)."""
    passes = range(self.self_ensemble)
    return [g for g in (tuple(t for t in passes if t < 4), tuple(t for t in passes if t >= 4))
            if g]

  def _executables(self, batch: int, height: int, width: int) -> list[jax.stages.Compiled]:
    """One compiled forward pass per group of `_pass_groups` for `batch`
    canvases of `height` x `width` (multiples of the grid)."""
    return [compiled_forward(self.model, self.params,
                             (batch * len(g), *((width, height) if g[0] >= 4 else (height, width)),
                              3))
            for g in self._pass_groups()]

  def _bytes_per_pixel(self, height: int, width: int) -> float | None:
    """Memory per canvas pixel and pass of a call, beyond the params, read off
    the compiled programs for one `height` x `width` canvas (None where the
    backend does not say)."""
    per_pixel = []
    for group, fn in zip(self._pass_groups(), self._executables(1, height, width)):
      used = compiled_memory(fn)
      if used is None:
        return None
      per_pixel.append((used - self._params_bytes) / (len(group) * height * width))
    return max(per_pixel)

  def plan(self, height: int, width: int, batch: int = 1) -> tiling.TilePlan | None:
    """How `batch` images of `height` x `width` run: None as whole canvases in
    one call, else each image as these tiles.

    Compiles a program to read its memory when the choice depends on it.

    Raises:
      ValueError: `max_memory` is too small for the smallest tile.
    """
    hp, wp = self.geometry(height, width).padded_shape
    if self.tile == 0:
      return None
    grid, passes = self.model.multiple, max(len(g) for g in self._pass_groups())
    room = self.max_memory - self._params_bytes
    if self.tile:
      plan = tiling.plan_tiles(hp, wp, grid, self.tile, self.tile_overlap)
      if len(plan) == 1:
        return None
      per_pixel = self._bytes_per_pixel(plan.tile_height, plan.tile_width)
      fit = 1 if per_pixel is None else int(
          room // (per_pixel * passes * plan.tile_height * plan.tile_width))
      return dataclasses.replace(plan, batch=min(max(fit, 1), len(plan)))
    grid_cells = PROBE_CELLS * grid
    per_pixel = self._bytes_per_pixel(min(hp, grid_cells), min(wp, grid_cells))
    if per_pixel is None or per_pixel * passes * batch * hp * wp <= room:
      return None
    if room <= 0:
      raise ValueError(f'max_memory ({self.max_memory / 2**30:.2f} GiB) is less than the '
                       f'params alone ({self._params_bytes / 2**30:.2f} GiB)')
    return tiling.auto_plan(hp, wp, grid, self.tile_overlap, room / (per_pixel * passes))

  def flops(self, height: int, width: int, batch: int = 1) -> float:
    """XLA FLOPs of deblurring `batch` images of this size, all passes and
    tiles (compiles if needed).

    NaN in `'exact'` mode: XLA cannot count loops whose trip counts depend on
    the kept windows; a fixed `capacity` fraction counts that budget.
    """
    if self.model.capacity == 'exact':
      return float('nan')
    plan = self.plan(height, width, batch)
    if plan is None:
      hp, wp = self.geometry(height, width).padded_shape
      return sum(compiled_flops(e) for e in self._executables(batch, hp, wp))
    calls = batch * -(-len(plan) // plan.batch)
    return calls * sum(compiled_flops(e) for e in self._executables(
        plan.batch, plan.tile_height, plan.tile_width))

  def _run(self, x: np.ndarray):
    """Every pass of the self-ensemble on canvases `x` [N, Hp, Wp, 3].

    Returns:
      (restored [N, Hp, Wp, 3], keep maps, dropped counts, seconds, FLOPs).
    """
    groups = self._pass_groups()
    inputs = [np.ascontiguousarray(np.concatenate([dihedral(x, t) for t in ts]))
              for ts in groups]
    fns = self._executables(*x.shape[:3])
    for fn, xs in zip(fns, inputs):
      if self.warmup and xs.shape not in self._warm:
        jax.block_until_ready(fn(self.params, xs))
        self._warm.add(xs.shape)
    start = time.perf_counter()
    outs = jax.device_get([fn(self.params, xs) for fn, xs in zip(fns, inputs)])
    seconds = time.perf_counter() - start
    flops = (float('nan') if self.model.capacity == 'exact'
             else sum(compiled_flops(fn) for fn in fns))
    if self.self_ensemble == 1:
      restored, decisions, dropped = outs[0]
      decisions = tuple(np.asarray(d).astype(np.uint8) for d in decisions)
      dropped = tuple(np.asarray(d) for d in dropped)
    else:
      restored, decisions, dropped = self._average(groups, outs, x.shape[0])
    return np.asarray(restored, np.float32), decisions, dropped, seconds, flops

  def _run_tiles(self, canvas: np.ndarray, plan: tiling.TilePlan):
    """`_run` on one canvas [Hp, Wp, 3] as the tiles of `plan`, blended."""
    stitch = tiling.Stitcher(plan, [b.shifted for b in self.blocks])
    origins, n = plan.origins(), plan.batch
    th, tw = plan.tile_height, plan.tile_width
    dropped, seconds, flops = np.zeros(len(self.blocks), np.int64), 0.0, 0.0
    with tqdm(total=len(origins), desc='tiles', unit='tile', leave=False,
              delay=PROGRESS_DELAY, disable=not self.progress) as bar:
      for start in range(0, len(origins), n):
        part = origins[start:start + n]
        x = np.zeros((n, th, tw, 3), np.float32)  # a short last batch is padded
        for j, (y, left) in enumerate(part):
          x[j] = canvas[y:y + th, left:left + tw]
        restored, decisions, drops, s, f = self._run(x)
        for j, origin in enumerate(part):
          stitch.add(origin, restored[j], [d[j] for d in decisions])
        dropped += [int(np.sum(d[:len(part)])) for d in drops]
        seconds, flops = seconds + s, flops + f
        bar.update(len(part))
    restored, maps = stitch.result()
    return restored, maps, tuple(dropped), seconds, flops

  def deblur_batch(self, images: np.ndarray) -> BatchResult:
    """Deblurs equal-size images.

    Args:
      images: [B, H, W, 3] float in [0, 1], uint8 or uint16.

    Returns:
      A `BatchResult`; `restored` is [B, H, W, 3] float32 clamped to [0, 1].

    Raises:
      OutOfMemoryError: the device ran out of memory (the message names the
        size and what to make smaller).
    """
    images = to_float(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected images [B, H, W, 3], got shape {images.shape}')
    b, h, w, _ = images.shape
    g = self.geometry(h, w)
    plan = self.plan(h, w, b)
    try:
      if plan is None:
        restored, decisions, dropped, seconds, flops = self._run(g.pad(images))
      else:
        parts = [self._run_tiles(g.pad(images[i]), plan) for i in range(b)]
        restored = np.stack([p[0] for p in parts])
        decisions = tuple(np.stack(maps) for maps in zip(*(p[1] for p in parts)))
        dropped = tuple(np.asarray(d) for d in zip(*(p[2] for p in parts)))
        seconds, flops = sum(p[3] for p in parts), sum(p[4] for p in parts)
    except Exception as e:  # pylint: disable=broad-except
      if not is_out_of_memory(e):
        raise
      how = 'whole' if plan is None else plan.describe()
      raise OutOfMemoryError(
          f'out of memory deblurring {b} image(s) of {h}x{w} ({how}, max_memory '
          f'{self.max_memory / 2**30:.2f} GiB): use a smaller --tile or --max_memory') from None
    return BatchResult(restored=np.ascontiguousarray(g.crop(restored)), decisions=decisions,
                       dropped=dropped, blocks=self.blocks, geometry=g, seconds=seconds,
                       flops=flops, tiles=plan)

  def _average(self, groups, outs, b: int):
    """The passes' outputs turned back and combined: the mean restored canvas,
    the share of passes that kept each window, the summed dropped counts."""
    n = self.self_ensemble
    restored, decisions, dropped = 0.0, [0.0] * len(self.blocks), [0] * len(self.blocks)
    for ts, (r, ds, drs) in zip(groups, outs):
      for i, t in enumerate(ts):
        part = slice(i * b, (i + 1) * b)
        restored = restored + undo_dihedral(np.asarray(r[part]), t)
        for k, block in enumerate(self.blocks):
          decisions[k] = decisions[k] + undo_dihedral_windows(
              np.asarray(ds[k][part], np.float32), t, block.shifted)
          dropped[k] = dropped[k] + np.asarray(drs[k][part])
    return (restored / n, tuple((d / n).astype(np.float32) for d in decisions),
            tuple(np.asarray(d) for d in dropped))

  def __call__(self, image: np.ndarray) -> DeblurResult:
    """Deblurs one [H, W, 3] image (float in [0, 1], uint8 or uint16)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'expected an image [H, W, 3], got shape {image.shape}')
    return self.deblur_batch(image[None])[0]
