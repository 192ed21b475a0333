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
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmdvit_jax import metrics
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
    decisions: per predicting block, [B, gh, gw] uint8 keep maps over the
      window grid of the PADDED canvas (see `geometry`; `blocks` says which
      block and whether its grid is shifted); with a self-ensemble, float32
      maps of the share of passes that kept each window.
    dropped: per predicting block, [B] kept windows a fixed capacity dropped
      (summed over the passes of a self-ensemble).
    blocks: the predicting blocks, in the order of `decisions`.
    geometry: where the images sit in the padded canvas.
    seconds: wall time of the call, all passes (compilation excluded).
    flops: XLA FLOPs of the batch call, all passes (see `compiled_flops`); NaN in
      `'exact'` mode, whose loop trip counts are known only at run time.
  """

  restored: np.ndarray
  decisions: tuple[np.ndarray, ...]
  dropped: tuple[np.ndarray, ...]
  blocks: tuple[DecisionBlock, ...]
  geometry: PadGeometry
  seconds: float
  flops: float

  def __len__(self) -> int:
    return self.restored.shape[0]

  def __getitem__(self, i: int) -> 'DeblurResult':
    n = len(self)
    return DeblurResult(
        restored=self.restored[i], decisions=tuple(d[i] for d in self.decisions),
        dropped=tuple(int(d[i]) for d in self.dropped), blocks=self.blocks,
        geometry=self.geometry, seconds=self.seconds / n, flops=self.flops / n)


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

  def kept_maps(self) -> list[np.ndarray]:
    """Per predicting block, [H, W] bool: pixels whose window the block kept
    (in any pass of a self-ensemble).

    Up-sampled on the padded canvas (shifted grids rolled back onto the image
    content) and cropped to the image.
    """
    g = self.geometry
    return [g.crop(np.asarray(metrics.upsample_decision(
        d > 0, g.padded_height, g.padded_width, b.shifted))[:, :, None])[:, :, 0]
            for d, b in zip(self.decisions, self.blocks)]


class Deblurrer:
  """Deblurs images of any size with one model and its params.

  Attributes:
    model: the `LMDViT` module (its capacity and threshold are used as set).
    params: the params pytree, on the default device.
    warmup: run each new executable once untimed before the first timed call,
      as the official script does (first calls pay for allocation).
    self_ensemble: passes per image, one of `SELF_ENSEMBLES`: the model runs on
      `dihedral(image, t)` for t < self_ensemble (1: the image alone; 2: and
      its mirror image; 4: all flips; 8: flips and transposes), and the
      outputs, turned back, are averaged.
  """

  def __init__(self, model: LMDViT, params: Any, warmup: bool = True, self_ensemble: int = 1):
    model.check_config()
    if self_ensemble not in SELF_ENSEMBLES:
      raise ValueError(f'self_ensemble must be one of {SELF_ENSEMBLES}, got {self_ensemble!r}')
    self.model = model
    self.params = jax.device_put(params)
    self.warmup = warmup
    self.self_ensemble = int(self_ensemble)
    self._warm: set[tuple[int, ...]] = set()

  @classmethod
  def from_kwargs(cls, kwargs: Mapping[str, Any], params: Any,
                  warmup: bool = True) -> 'Deblurrer':
    """From `LMDViT`'s keyword arguments (a `dtype` by name) and, among them,
    `self_ensemble`, which sets up inference around the model."""
    kwargs = dict(kwargs)
    self_ensemble = int(kwargs.pop('self_ensemble', 1))
    dtype = kwargs.get('dtype', 'float32')
    if isinstance(dtype, str):  # model.json and flags name it
      if dtype not in COMPUTE_DTYPES:
        raise ValueError(f'dtype must be one of {sorted(COMPUTE_DTYPES)}, got {dtype!r}')
      kwargs['dtype'] = COMPUTE_DTYPES[dtype]
    return cls(LMDViT(**kwargs), params, warmup, self_ensemble)

  @classmethod
  def from_checkpoint(cls, directory: str | Path, step: int | None = None,
                      overrides: Mapping[str, Any] | None = None,
                      warmup: bool = True) -> 'Deblurrer':
    """Loads a checkpoint directory; `overrides` replace its model.json and
    inference.json entries (e.g. {'capacity': 'masked', 'keep_threshold': 0.6,
    'dtype': 'bfloat16', 'self_ensemble': 1})."""
    # Imported here: orbax is only needed to read checkpoints.
    from lmdvit_jax import checkpointing  # pylint: disable=g-import-not-at-top
    kwargs, params = checkpointing.load_model(directory, step)
    settings = checkpointing.read_inference_settings(directory)
    return cls.from_kwargs({**kwargs, **settings, **(overrides or {})}, params, warmup)

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
    images of `height` x `width` (any size)."""
    hp, wp = self.geometry(height, width).padded_shape
    return [compiled_forward(self.model, self.params,
                             (batch * len(g), *((wp, hp) if g[0] >= 4 else (hp, wp)), 3))
            for g in self._pass_groups()]

  def flops(self, height: int, width: int, batch: int = 1) -> float:
    """XLA FLOPs of one call on `batch` images of this size, all passes
    (compiles if needed).

    NaN in `'exact'` mode: XLA cannot count loops whose trip counts depend on
    the kept windows; a fixed `capacity` fraction counts that budget.
    """
    if self.model.capacity == 'exact':
      return float('nan')
    return sum(compiled_flops(e) for e in self._executables(batch, height, width))

  def deblur_batch(self, images: np.ndarray) -> BatchResult:
    """Deblurs equal-size images.

    Args:
      images: [B, H, W, 3] float in [0, 1], uint8 or uint16.

    Returns:
      A `BatchResult`; `restored` is [B, H, W, 3] float32 clamped to [0, 1].
    """
    images = to_float(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected images [B, H, W, 3], got shape {images.shape}')
    b, h, w, _ = images.shape
    g = self.geometry(h, w)
    x = g.pad(images)
    groups = self._pass_groups()
    inputs = [np.ascontiguousarray(np.concatenate([dihedral(x, t) for t in ts]))
              for ts in groups]
    fns = self._executables(b, h, w)
    for fn, xs in zip(fns, inputs):
      if self.warmup and xs.shape not in self._warm:
        jax.block_until_ready(fn(self.params, xs))
        self._warm.add(xs.shape)
    start = time.perf_counter()
    outs = jax.device_get([fn(self.params, xs) for fn, xs in zip(fns, inputs)])
    seconds = time.perf_counter() - start
    if self.self_ensemble == 1:
      restored, decisions, dropped = outs[0]
      decisions = tuple(np.asarray(d).astype(np.uint8) for d in decisions)
      dropped = tuple(np.asarray(d) for d in dropped)
    else:
      restored, decisions, dropped = self._average(groups, outs, b)
    return BatchResult(
        restored=np.asarray(g.crop(restored), np.float32),
        decisions=decisions, dropped=dropped,
        blocks=self.blocks, geometry=g, seconds=seconds,
        flops=self.flops(h, w, b))

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
