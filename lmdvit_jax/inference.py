"""Inference on images of any size: pad to the window grid, run the compiled
model (whole, or as tiles when the image is too large for the memory budget),
crop back.

`Deblurrer` holds a model and its params and deblurs images of any size:

    deblurrer = Deblurrer.from_checkpoint('ckpt/lmdvit', settings=InferenceSettings(...))
    result = deblurrer(blurred)          # blurred: [H, W, 3] float in [0, 1] or uint8
    result.restored                      # [H, W, 3] float32 in [0, 1]
    result.decisions, result.blocks      # keep maps over the padded window grid
    result.seconds, result.flops         # run time (compilation excluded), XLA FLOPs
    result.tiles                         # None, or the tiles it ran as (`tiling`)

How it runs is one `InferenceSettings` (capacity, keep threshold, dtype,
self-ensemble, matmul precision, tiling, memory budget). The pieces: padding
and tiles in `tiling`, the self-ensemble in `ensemble`, the compiled programs
and their memory in `programs`, image conversion in `image_io`. A canvas that
would need more than `max_memory` (XLA's buffer assignment says how much a
pixel needs) runs as overlapping tiles of one shape, blended.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import time
from typing import Any

import jax
import numpy as np

from lmdvit_jax import ensemble, image_io, metrics, programs, tiling
from lmdvit_jax.errors import OutOfMemoryError
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import LMDViT, pruning
from lmdvit_jax.models.lmdvit import COMPUTE_DTYPES

# Re-exported: where callers look for them.
decision_blocks = ensemble.decision_blocks
DecisionBlock = pruning.DecisionBlock


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
    flops: XLA FLOPs of the call, all passes and tiles (`programs.compiled_flops`);
      NaN in `'exact'` mode, whose loop trip counts are known only at run time.
    tiles: the tiles each image ran as, None when it ran whole.
  """

  restored: np.ndarray
  decisions: tuple[np.ndarray, ...]
  dropped: tuple[np.ndarray, ...]
  blocks: tuple[pruning.DecisionBlock, ...]
  geometry: tiling.PadGeometry
  seconds: float
  flops: float
  tiles: tiling.TilePlan | None = None

  def __len__(self) -> int:
    return self.restored.shape[0]

  def __getitem__(self, i: int) -> DeblurResult:
    n = len(self)
    return DeblurResult(
      restored=self.restored[i],
      decisions=tuple(d[i] for d in self.decisions),
      dropped=tuple(int(d[i]) for d in self.dropped),
      blocks=self.blocks,
      geometry=self.geometry,
      seconds=self.seconds / n,
      flops=self.flops / n,
      tiles=self.tiles,
    )


@dataclasses.dataclass
class DeblurResult:
  """One image: as `BatchResult` without the batch axis; seconds and FLOPs per image."""

  restored: np.ndarray
  decisions: tuple[np.ndarray, ...]
  dropped: tuple[int, ...]
  blocks: tuple[pruning.DecisionBlock, ...]
  geometry: tiling.PadGeometry
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
    return [
      g.crop(
        np.asarray(metrics.upsample_decision(d > 0, g.padded_height, g.padded_width, b.shifted))[
          :, :, None
        ]
      )[:, :, 0]
      for d, b in zip(self.decisions, self.blocks)
    ]


# ----------------------------------------------------------------------------
# The deblurrer.

# Side of the canvas (in grid cells) whose compiled program measures the
# memory per pixel: memory grows linearly with the pixels (one probe at
# 256x256 and at 4096x6016 agree within 0.1%), so a larger one adds nothing.
PROBE_CELLS = 16


def _size(n: float) -> str:
  """Bytes as people read them: '1.2 GiB', '12.8 MiB', '1.0 KiB'."""
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if n >= scale:
      return f'{n / scale:.1f} {unit}'
  return f'{int(n)} B'


class Deblurrer:
  """Deblurs images of any size with one model and its params.

  An image whose padded canvas would need more than the settings'
  `max_memory` runs as overlapping tiles (see `tiling`), in batches of one
  compiled program, and the tiles are blended back; memory then depends on
  the tile, not the photo.

  Attributes:
    model: the `LMDViT` module, with the settings' capacity, keep threshold
      and dtype applied.
    params: the params pytree, on the default device.
    settings: the `InferenceSettings` it runs with (`self_ensemble` and
      `max_memory` filled in).
    warmup: run each new executable once untimed before the first timed call,
      as the official script does (first calls pay for allocation).
    progress: show a progress bar over the tiles of images that take a while.
  """

  def __init__(
    self,
    model: LMDViT,
    params: Any,
    settings: InferenceSettings | None = None,
    *,
    warmup: bool = True,
    progress: bool = False,
  ):
    settings = settings or InferenceSettings()
    model = settings.model(model)
    model.check_config()
    grid = model.multiple
    if settings.tile:
      tiling.check_multiple('tile', settings.tile, grid, grid)
    overlap = (
      grid
      if settings.tile_overlap is None
      else tiling.check_multiple('tile_overlap', settings.tile_overlap, grid)
    )
    if settings.tile and overlap >= settings.tile:
      raise ValueError(f'tile_overlap ({overlap}) must be smaller than the tile ({settings.tile})')
    self.model = model
    self.params = jax.device_put(params)
    self.settings = settings.replace(
      self_ensemble=settings.passes,
      tile_overlap=overlap,
      max_memory=settings.max_memory or programs.default_max_memory(),
    )
    self.warmup = warmup
    self.progress = progress
    self._params_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(self.params))
    if self.max_memory <= self._params_bytes:
      raise ValueError(
        f'max_memory ({_size(self.max_memory)}) is less than the params alone '
        f'({_size(self._params_bytes)})'
      )
    self._warm: set[tuple[int, ...]] = set()

  # What the settings say, where the deblurrer's users read it.
  self_ensemble = property(lambda self: self.settings.passes)
  tile = property(lambda self: self.settings.tile)
  tile_overlap = property(lambda self: self.settings.tile_overlap)
  max_memory = property(lambda self: self.settings.max_memory)
  matmul_precision = property(lambda self: self.settings.matmul_precision)

  @classmethod
  def from_checkpoint(
    cls,
    directory: str | Path,
    step: int | None = None,
    settings: InferenceSettings | None = None,
    **options: Any,
  ) -> Deblurrer:
    """Loads a checkpoint directory: its model.json, params and inference.json,
    under `settings` (unset fields keep what the checkpoint records);
    `options` are `warmup` and `progress`."""
    # Imported here: orbax is only needed to read checkpoints.
    from lmdvit_jax import checkpointing

    kwargs, params = checkpointing.load_model(directory, step)
    recorded = checkpointing.read_inference_settings(directory)
    settings = (settings or InferenceSettings()).with_recorded(recorded)
    return cls(model_from_kwargs(kwargs), params, settings, **options)

  @classmethod
  def for_command(
    cls,
    directory: str | Path,
    step: int | None = None,
    settings: InferenceSettings | None = None,
    **options: Any,
  ) -> Deblurrer:
    """`from_checkpoint`, then `check_memory`: what a command loads, so that a
    memory budget no image fits in stops it before any image is read."""
    deblurrer = cls.from_checkpoint(directory, step, settings, **options)
    deblurrer.check_memory()
    return deblurrer

  @property
  def blocks(self) -> tuple[pruning.DecisionBlock, ...]:
    return decision_blocks(self.model)

  def geometry(self, height: int, width: int) -> tiling.PadGeometry:
    return tiling.pad_geometry(height, width, self.model.multiple)

  def _executable(self, batch: int, height: int, width: int) -> jax.stages.Compiled:
    """The compiled forward pass, all passes, for `batch` canvases of
    `height` x `width` (multiples of the grid)."""
    return programs.compiled_forward(
      self.model, self.params, (batch, height, width, 3), self.self_ensemble, self.matmul_precision
    )

  def _bytes_per_pixel(self, height: int, width: int) -> float | None:
    """Memory per canvas pixel of a call, beyond the params, read off the
    compiled program for one `height` x `width` canvas (None where the
    backend does not say)."""
    used = programs.compiled_memory(self._executable(1, height, width))
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
    smallest = self.model.multiple**2
    if per_pixel is not None and per_pixel * smallest > self.max_memory - self._params_bytes:
      raise ValueError(
        f'max_memory ({_size(self.max_memory)}) cannot hold the params '
        f'({_size(self._params_bytes)}) and the smallest canvas '
        f'({self.model.multiple}x{self.model.multiple}: '
        f'{_size(per_pixel * smallest)}): raise --max_memory'
      )

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
      fit = (
        1 if per_pixel is None else int(room // (per_pixel * plan.tile_height * plan.tile_width))
      )
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
      return programs.compiled_flops(
        self._executable(batch, *self.geometry(height, width).padded_shape)
      )
    calls = batch * -(-len(plan) // plan.batch)
    return calls * programs.compiled_flops(
      self._executable(plan.batch, plan.tile_height, plan.tile_width)
    )

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
    flops = float('nan') if self.model.capacity == 'exact' else programs.compiled_flops(fn)
    kept = np.uint8 if self.self_ensemble == 1 else np.float32
    return (
      np.asarray(restored, np.float32),
      tuple(np.asarray(d).astype(kept) for d in decisions),
      tuple(np.asarray(d) for d in dropped),
      seconds,
      flops,
    )

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
    images = image_io.to_float(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected images [B, H, W, 3], got shape {images.shape}')
    b, h, w, _ = images.shape
    g = self.geometry(h, w)
    plan = self.plan(h, w, b)
    try:
      if plan is None:
        restored, decisions, dropped, seconds, flops = self._run(g.pad(images))
      else:
        parts = [
          tiling.run_tiles(
            self._run, images[i], g, plan, [b.shifted for b in self.blocks], self.progress
          )
          for i in range(b)
        ]
        # One large photo: no stacked copy of its canvas.
        restored = parts[0][0][None] if b == 1 else np.stack([p[0] for p in parts])
        decisions = tuple(np.stack(maps) for maps in zip(*(p[1] for p in parts)))
        dropped = tuple(np.asarray(d) for d in zip(*(p[2] for p in parts)))
        seconds, flops = sum(p[3] for p in parts), sum(p[4] for p in parts)
    except Exception as e:
      if not programs.is_out_of_memory(e):
        raise
      how = 'whole' if plan is None else plan.describe()
      raise OutOfMemoryError(
        f'out of memory deblurring {b} image(s) of {h}x{w} ({how}, max_memory '
        f'{self.max_memory / 2**30:.2f} GiB): use a smaller --tile or --max_memory'
      ) from None
    return BatchResult(
      restored=g.crop(restored),
      decisions=decisions,
      dropped=dropped,
      blocks=self.blocks,
      geometry=g,
      seconds=seconds,
      flops=flops,
      tiles=plan,
    )

  def __call__(self, image: np.ndarray) -> DeblurResult:
    """Deblurs one [H, W, 3] image (float in [0, 1], uint8 or uint16)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'expected an image [H, W, 3], got shape {image.shape}')
    return self.deblur_batch(image[None])[0]


def model_from_kwargs(kwargs: dict[str, Any]) -> LMDViT:
  """`LMDViT` from a checkpoint's model.json (its `dtype` by name)."""
  kwargs = dict(kwargs)
  dtype = kwargs.get('dtype', 'float32')
  if isinstance(dtype, str):
    if dtype not in COMPUTE_DTYPES:
      raise ValueError(f'dtype must be one of {sorted(COMPUTE_DTYPES)}, got {dtype!r}')
    kwargs['dtype'] = COMPUTE_DTYPES[dtype]
  return LMDViT(**kwargs)
