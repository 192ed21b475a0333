"""Inference on images of any size: pad to the window grid, run the compiled
model (whole, or as tiles when the image is too large for the memory budget),
crop back.

`Deblurrer` holds a model and its params and deblurs images of any size:

    deblurrer = Deblurrer.from_checkpoint('ckpt/lmdvit')
    result = deblurrer(blurred)          # blurred: [H, W, 3] float in [0, 1] or uint8
    result.restored                      # [H, W, 3] float32 in [0, 1]
    result.decisions, result.blocks      # keep maps over the padded window grid
    result.seconds, result.flops         # run time (compilation excluded), XLA FLOPs
    result.tiles                         # None, or the tiles it ran as (`tiling`)

Inputs are zero-padded, centred, to multiples of `model.multiple` (16 windows),
as the official evaluation does. One XLA executable is compiled per
(model, canvas shape, passes, matmul precision) and kept for the life of the
process, so images of equal padded size (ReLoBlur: all of them) compile once;
params are arguments of the executable, never baked in as constants. A canvas
that would need more than `max_memory` (XLA's buffer assignment says how much
a pixel needs) runs as overlapping tiles of one shape, blended (`tiling`).

`self_ensemble=N` (2, 4 or 8) runs the model on N flipped and transposed copies
of each image, inside the same compiled program, and averages the outputs
turned back (a geometric self-ensemble: N times the work, less noise in the
restoration); a checkpoint's inference.json may record it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lmdvit_jax import metrics, tiling
from lmdvit_jax.errors import OutOfMemoryError
from lmdvit_jax.models import LMDViT, pruning
from lmdvit_jax.models.pruning import DecisionBlock, parse_capacity  # pylint: disable=unused-import
from lmdvit_jax.models.lmdvit import (COMPUTE_DTYPES, MATMUL_PRECISIONS, STAGE_NAMES,
                                      matmul_precision)

Array = TypeVar('Array', np.ndarray, jax.Array)

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

  def pad_window(self, x: np.ndarray, top: int, left: int, height: int,
                 width: int) -> np.ndarray:
    """[H, W, C] -> the [height, width, C] window at (top, left) of `pad(x)`,
    without building the padded canvas (a tile of a large photo)."""
    out = np.zeros((height, width, x.shape[-1]), np.float32)
    y0, y1 = max(top, self.top), min(top + height, self.top + self.height)
    x0, x1 = max(left, self.left), min(left + width, self.left + self.width)
    if y0 < y1 and x0 < x1:
      out[y0 - top:y1 - top, x0 - left:x1 - left] = x[y0 - self.top:y1 - self.top,
                                                     x0 - self.left:x1 - self.left]
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


def pass_groups(passes: int) -> list[tuple[int, ...]]:
  """The first `passes` dihedral transforms grouped by output shape: those
  that keep the image's shape (0-3), then the transposing ones (4-7)."""
  return [g for g in (tuple(range(min(passes, 4))), tuple(range(4, passes))) if g]


def _forward(model: LMDViT, params: Any, x: jax.Array, passes: int = 1,
             precision: str = 'default'):
  """`model` on canvases `x` [B, Hp, Wp, 3], averaged over `dihedral(x, t)`
  for t < `passes` (each pass turned back first), matmuls at `precision`
  (`MATMUL_PRECISIONS`).

  Returns:
    (restored [B, Hp, Wp, 3] clamped to [0, 1], per predicting block the
    share of passes that kept each window [B, gh, gw] (float32; in {0, 1}
    for one pass), per block the kept windows a fixed capacity dropped [B],
    summed over the passes).
  """
  b = x.shape[0]
  shifted = [block.shifted for block in decision_blocks(model)]
  restored, decisions, dropped = 0.0, [0.0] * len(shifted), [0] * len(shifted)
  for group in pass_groups(passes):
    # Passes of one shape run as one batch; scores and gate are large and
    # unused here, so leaving them out lets XLA skip materialising them.
    with matmul_precision(precision):
      out = model.apply({'params': params}, jnp.concatenate([dihedral(x, t) for t in group]),
                        train=False)
    turned = jnp.clip(out.restored, 0.0, 1.0)
    for i, t in enumerate(group):
      part = slice(i * b, (i + 1) * b)
      restored = restored + undo_dihedral(turned[part], t)
      for k, s in enumerate(shifted):
        decisions[k] = decisions[k] + undo_dihedral_windows(
            out.decisions[k][part].astype(jnp.float32), t, s)
        dropped[k] = dropped[k] + out.dropped[k][part]
  return restored / passes, tuple(d / passes for d in decisions), tuple(dropped)


_EXECUTABLES: dict[tuple[LMDViT, tuple[int, ...], int, str], jax.stages.Compiled] = {}
_LOCK = threading.Lock()


def compiled_forward(model: LMDViT, params: Any, shape: tuple[int, int, int, int],
                     passes: int = 1, precision: str = 'default') -> jax.stages.Compiled:
  """The executable of `_forward` for float32 canvases of `shape` [B, Hp, Wp, 3].

  Cached per (model attributes, shape, passes, precision) for the process;
  `params` only supply their shapes and dtypes.
  """
  key = (model, tuple(int(s) for s in shape), int(passes), precision)
  with _LOCK:
    if key not in _EXECUTABLES:
      x = jax.ShapeDtypeStruct(key[1], jnp.float32)
      p = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
      fn = jax.jit(_forward, static_argnums=(0, 3, 4))
      _EXECUTABLES[key] = fn.lower(model, p, x, passes, precision).compile()
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


def dihedral(x: Array, t: int) -> Array:
  """Transform `t` (0-7) of `x` [N, H, W, ...] (numpy or jax): bit 0 flips W,
  bit 1 flips H, then bit 2 swaps H and W. Transforms 0-3 keep the shape, 4-7
  transpose it."""
  if t & 1:
    x = x[:, :, ::-1]
  if t & 2:
    x = x[:, ::-1]
  if t & 4:
    x = x.swapaxes(1, 2)
  return x


def undo_dihedral(x: Array, t: int) -> Array:
  """The inverse of `dihedral(., t)`."""
  if t & 4:
    x = x.swapaxes(1, 2)
  if t & 2:
    x = x[:, ::-1]
  if t & 1:
    x = x[:, :, ::-1]
  return x


def undo_dihedral_windows(decision: Array, t: int, shifted: bool) -> Array:
  """`undo_dihedral` of a keep map [N, gh, gw] over the window grid of a pass
  on `dihedral(image, t)`.

  A shifted grid's windows start half a window in; mirrored, they end half a
  window from the other side, which is the same grid one window further on
  (win_size is even): so a flip of a shifted map is also rolled by one window.
  """
  roll = -1 if shifted else 0
  xp = np if isinstance(decision, np.ndarray) else jnp
  if t & 4:
    decision = decision.swapaxes(1, 2)
  if t & 2:
    decision = xp.roll(decision[:, ::-1], roll, axis=1)
  if t & 1:
    decision = xp.roll(decision[:, :, ::-1], roll, axis=2)
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


# The settings of `cli.inference_settings` that are `Deblurrer` arguments, not
# overrides of the checkpoint's model.json and inference.json.
DEBLURRER_OPTIONS = ('tile', 'tile_overlap', 'max_memory', 'matmul_precision')


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Command-line inference settings -> (`checkpoint_overrides` of the rest,
  `Deblurrer` options), as `Deblurrer.from_checkpoint` takes them."""
  options = {k: v for k, v in settings.items() if k in DEBLURRER_OPTIONS}
  rest = {k: v for k, v in settings.items() if k not in DEBLURRER_OPTIONS}
  return checkpoint_overrides(**rest), options


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


def _size(n: float) -> str:
  """Bytes as people read them: '1.2 GiB', '12.8 MiB', '1.0 KiB'."""
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if n >= scale:
      return f'{n / scale:.1f} {unit}'
  return f'{int(n)} B'


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
    matmul_precision: of float32 matmuls, one of `MATMUL_PRECISIONS`
      ('highest' to compare with PyTorch on an NVIDIA GPU).
    progress: show a progress bar over the tiles of images that take a while.
  """

  def __init__(self, model: LMDViT, params: Any, warmup: bool = True, self_ensemble: int = 1,
               *, tile: int | None = None, tile_overlap: int | None = None,
               max_memory: int | None = None, matmul_precision: str = 'default',
               progress: bool = False):
    model.check_config()
    if matmul_precision not in MATMUL_PRECISIONS:
      raise ValueError(f'matmul_precision must be one of {MATMUL_PRECISIONS}, '
                       f'got {matmul_precision!r}')
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
    self.matmul_precision = matmul_precision
    self.progress = progress
    self._params_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(self.params))
    if self.max_memory <= self._params_bytes:
      raise ValueError(f'max_memory ({_size(self.max_memory)}) is less than the params alone '
                       f'({_size(self._params_bytes)})')
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

  def _executable(self, batch: int, height: int, width: int) -> jax.stages.Compiled:
    """The compiled forward pass, all passes, for `batch` canvases of
    `height` x `width` (multiples of the grid)."""
    return compiled_forward(self.model, self.params, (batch, height, width, 3),
                            self.self_ensemble, self.matmul_precision)

  def _bytes_per_pixel(self, height: int, width: int) -> float | None:
    """Memory per canvas pixel of a call, beyond the params, read off the
    compiled program for one `height` x `width` canvas (None where the
    backend does not say)."""
    used = compiled_memory(self._executable(1, height, width))
    return None if used is None else (used - self._params_bytes) / (height * width)

  def check_memory(self) -> None:
    """Fails before any image is read when no image could run in `max_memory`:
    not even the smallest canvas (one grid cell) fits beside the params.

    Compiles the probe program `plan` reads the memory per pixel from (the
    first image of 16 grid cells or more reuses it).

    Raises:
      ValueError: naming the budget and what the smallest canvas needs.
    """
    if self.tile == 0:
      return
    probe = PROBE_CELLS * self.model.multiple
    per_pixel = self._bytes_per_pixel(probe, probe)
    smallest = self.model.multiple ** 2
    if per_pixel is not None and per_pixel * smallest > self.max_memory - self._params_bytes:
      raise ValueError(f'max_memory ({_size(self.max_memory)}) cannot hold the params '
                       f'({_size(self._params_bytes)}) and the smallest canvas '
                       f'({self.model.multiple}x{self.model.multiple}: '
                       f'{_size(per_pixel * smallest)}): raise --max_memory')

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
    grid = self.model.multiple
    room = self.max_memory - self._params_bytes
    if self.tile:
      plan = tiling.plan_tiles(hp, wp, grid, self.tile, self.tile_overlap)
      if len(plan) == 1:
        return None
      per_pixel = self._bytes_per_pixel(plan.tile_height, plan.tile_width)
      fit = 1 if per_pixel is None else int(
          room // (per_pixel * plan.tile_height * plan.tile_width))
      return dataclasses.replace(plan, batch=min(max(fit, 1), len(plan)))
    grid_cells = PROBE_CELLS * grid
    per_pixel = self._bytes_per_pixel(min(hp, grid_cells), min(wp, grid_cells))
    if per_pixel is None or per_pixel * batch * hp * wp <= room:
      return None
    return tiling.auto_plan(hp, wp, grid, self.tile_overlap, room / per_pixel)

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
      return compiled_flops(self._executable(batch, *self.geometry(height, width).padded_shape))
    calls = batch * -(-len(plan) // plan.batch)
    return calls * compiled_flops(self._executable(plan.batch, plan.tile_height, plan.tile_width))

  def _run(self, x: np.ndarray):
    """Every pass of the self-ensemble on canvases `x` [N, Hp, Wp, 3].

    Returns:
      (restored [N, Hp, Wp, 3], keep maps, dropped counts, seconds, FLOPs).
    """
    fn = self._executable(*x.shape[:3])
    if self.warmup and x.shape not in self._warm:
      jax.block_until_ready(fn(self.params, x))
      self._warm.add(x.shape)
    start = time.perf_counter()
    restored, decisions, dropped = jax.device_get(fn(self.params, x))
    seconds = time.perf_counter() - start
    flops = float('nan') if self.model.capacity == 'exact' else compiled_flops(fn)
    kept = np.uint8 if self.self_ensemble == 1 else np.float32
    return (np.asarray(restored, np.float32), tuple(np.asarray(d).astype(kept) for d in decisions),
            tuple(np.asarray(d) for d in dropped), seconds, flops)

  def _run_tiles(self, image: np.ndarray, geometry: PadGeometry, plan: tiling.TilePlan):
    """`_run` on the canvas of one image [H, W, 3] as the tiles of `plan`, blended."""
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
          x[j] = geometry.pad_window(image, y, left, th, tw)
        restored, decisions, drops, s, f = self._run(x)
        for j, origin in enumerate(part):
          stitch.add(origin, restored[j], [d[j] for d in decisions])
        dropped += np.array([np.sum(d[:len(part)]) for d in drops], np.int64)
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
        parts = [self._run_tiles(images[i], g, plan) for i in range(b)]
        # One large photo: no stacked copy of its canvas.
        restored = parts[0][0][None] if b == 1 else np.stack([p[0] for p in parts])
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
    return BatchResult(restored=g.crop(restored), decisions=decisions,
                       dropped=dropped, blocks=self.blocks, geometry=g, seconds=seconds,
                       flops=flops, tiles=plan)

  def __call__(self, image: np.ndarray) -> DeblurResult:
    """Deblurs one [H, W, 3] image (float in [0, 1], uint8 or uint16)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'expected an image [H, W, 3], got shape {image.shape}')
    return self.deblur_batch(image[None])[0]
