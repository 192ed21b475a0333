"""Image quality and window pruning metrics, as pure jnp functions.

Conventions:
  * Images are float arrays ``[..., H, W, C]`` with values in ``[0, data_range]``
    (``[0, 1]`` by default). Any number of leading batch axes is allowed
    (``[H, W, C]`` or ``[B, H, W, C]``); every image metric reduces the last
    three axes and returns one value per image, shape ``[...]``.
  * Blur masks are ``[..., H, W, 1]`` (or ``[..., H, W, C]``) with 1 = blurred.
    Values in ``{0, 1}``; fractional values act as pixel weights.
  * Nothing here clamps: the evaluation clamps (or quantises) the restored image
    to ``[0, 1]`` before scoring, as the official evaluation does.

Formulas follow the official LMD-ViT evaluation (``test.py``):
  * PSNR: mean squared error over all pixels and channels of an image,
    ``10 log10(L^2 / (mse + eps))``. The official script uses the ``pyiqa``
    PSNR, whose ``eps`` is 1e-8, so identical images score 80 dB there; the
    default here is the same.
  * Weighted PSNR: squared error summed over mask pixels (all channels) divided
    by the number of mask pixels times channels; no ``eps`` (identical images
    inside the mask give ``inf``).
  * SSIM: computed on each colour channel separately (not on grey) with an
    11x11 Gaussian window of sigma 1.5 over valid positions only (no padding,
    a 5-pixel border is lost), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, and
    the SSIM map is averaged over channels and valid positions.
  * Weighted SSIM: the same SSIM map averaged over the positions whose centre
    pixel is in the mask (the mask cropped by 5 pixels on every side).

Empty masks: the weighted metrics return NaN when the mask has no weight (for
weighted SSIM: no mask pixel in the valid region), so callers can average with
``nanmean``. The official code gives NaN for weighted PSNR and 0 for weighted
SSIM in that case.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Functions take jax or numpy arrays (evaluation scores numpy images).
Array = jax.Array | np.ndarray

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Pixels lost on every side by the valid-only Gaussian filtering.
SSIM_BORDER = (SSIM_WINDOW - 1) // 2


def _image_axes(x: Array) -> tuple[int, int, int]:
  if x.ndim < 3:
    raise ValueError(f'expected [..., H, W, C], got shape {x.shape}')
  return (-3, -2, -1)


def _weighted_mean(values: Array, weights: Array) -> tuple[Array, Array]:
  """Per-image weighted mean over the last three axes and total weight.

  Args:
    values: [..., H, W, C].
    weights: broadcastable to ``values`` (e.g. [..., H, W, 1]).

  Returns:
    (mean, total_weight), both [...]. ``mean`` is NaN where the weight is 0.
  """
  weights = jnp.broadcast_to(weights, values.shape).astype(values.dtype)
  total = jnp.sum(weights, axis=_image_axes(values))
  num = jnp.sum(values * weights, axis=_image_axes(values))
  # Safe denominator keeps gradients finite; the NaN is put in explicitly.
  mean = num / jnp.where(total > 0, total, 1)
  return jnp.where(total > 0, mean, jnp.nan), total


def mse_to_psnr(mse: Array, data_range: float = 1.0, eps: float = 0.0) -> Array:
  """``10 log10(L^2 / (mse + eps))``; ``inf`` for a zero error and ``eps=0``."""
  return 10.0 * jnp.log10(data_range**2 / (mse + eps))


def psnr(pred: Array, target: Array, data_range: float = 1.0, eps: float = 1e-8) -> Array:
  """Peak signal-to-noise ratio of whole images.

  Args:
    pred: [..., H, W, C] restored image.
    target: [..., H, W, C] ground truth.
    data_range: peak value L.
    eps: added to the MSE. 1e-8 reproduces the official (pyiqa) metric, which
      caps identical images at ``10 log10(L^2 / eps)`` (80 dB for L = 1); pass
      0 for the textbook value (``inf`` for identical images).

  Returns:
    [...] PSNR in dB, one per image.
  """
  err = jnp.mean(jnp.square(pred - target), axis=_image_axes(pred))
  return mse_to_psnr(err, data_range, eps)


def weighted_psnr(pred: Array, target: Array, mask: Array, data_range: float = 1.0) -> Array:
  """PSNR over the pixels of the mask only (the official weighted PSNR).

  The MSE is ``sum(mask * (pred - target)^2) / sum(mask)`` with the sums over
  pixels and channels (a one-channel mask counts once per channel).

  Args:
    pred: [..., H, W, C].
    target: [..., H, W, C].
    mask: [..., H, W, 1] or [..., H, W, C], 1 = pixel counted.
    data_range: peak value L.

  Returns:
    [...] PSNR in dB; ``inf`` if the images agree on the mask, NaN if the mask
    is empty.
  """
  err, _ = _weighted_mean(jnp.square(pred - target), mask)
  return mse_to_psnr(err, data_range)


def sharp_psnr(pred: Array, target: Array, mask: Array, data_range: float = 1.0) -> Array:
  """PSNR over the pixels OUTSIDE the blur mask: damage done to sharp areas.

  Args and conventions as `weighted_psnr`; NaN when the mask covers the whole
  image (e.g. GoPro, whose masks are all ones).
  """
  return weighted_psnr(pred, target, 1.0 - mask, data_range)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian taps [size]; the 2-D window is their outer product."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-(x**2) / (2.0 * sigma**2))
  return g / g.sum()


def _filter_valid(x: Array, taps: np.ndarray) -> Array:
  """Separable Gaussian filter, valid positions only: [..., H, W, C] ->
  [..., H - k + 1, W - k + 1, C].

  Shifted multiply-adds rather than a depthwise ``lax.conv``: the filter is
  tiny and this form is fast on CPU and exact to the float type.
  """
  return _separable_valid(x, tuple(float(t) for t in taps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _separable_valid(x: Array, taps: tuple[float, ...]) -> Array:
  k = len(taps)
  h, w = x.shape[-3], x.shape[-2]
  rows = sum(t * x[..., i : i + h - k + 1, :, :] for i, t in enumerate(taps))
  return sum(t * rows[..., :, j : j + w - k + 1, :] for j, t in enumerate(taps))  # type: ignore


def _separable_valid_fwd(x: Array, taps: tuple[float, ...]) -> tuple[Array, None]:
  return _separable_valid(x, taps), None


def _separable_valid_bwd(taps: tuple[float, ...], _, g: Array) -> tuple[Array]:
  # The transpose of a valid correlation is the full correlation with the
  # flipped taps: one padded copy of g, filtered the same way. Autodiff's
  # transpose pads each of the 2k shifted reads separately, and XLA:CPU
  # wrote every one of them out (5% of the train step).
  k = len(taps)
  pad = [(0, 0)] * (g.ndim - 3) + [(k - 1, k - 1), (k - 1, k - 1), (0, 0)]
  return (_separable_valid(jnp.pad(g, pad), taps[::-1]),)


_separable_valid.defvjp(_separable_valid_fwd, _separable_valid_bwd)


# Jitted so that eager callers do not dispatch ~60 small ops one by one.
@jax.jit
def ssim_map(pred: Array, target: Array, data_range: float = 1.0) -> Array:
  """Per-channel SSIM map over the valid positions.

  Args:
    pred: [..., H, W, C], H and W at least 11.
    target: [..., H, W, C].
    data_range: peak value L (sets ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``).

  Returns:
    [..., H - 10, W - 10, C]; entry (i, j) is centred on pixel (i + 5, j + 5).
  """
  if pred.shape[-3] < SSIM_WINDOW or pred.shape[-2] < SSIM_WINDOW:
    raise ValueError(
      f'SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got shape {pred.shape}'
    )
  taps = gaussian_window()
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  mu1 = _filter_valid(pred, taps)
  mu2 = _filter_valid(target, taps)
  mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
  var1 = _filter_valid(pred * pred, taps) - mu11
  var2 = _filter_valid(target * target, taps) - mu22
  cov = _filter_valid(pred * target, taps) - mu12
  num = (2.0 * mu12 + c1) * (2.0 * cov + c2)
  den = (mu11 + mu22 + c1) * (var1 + var2 + c2)
  return num / den


def crop_to_ssim_map(mask: Array) -> Array:
  """Crops a [..., H, W, C'] pixel mask to the SSIM map grid (5 px per side)."""
  b = SSIM_BORDER
  return mask[..., b : mask.shape[-3] - b, b : mask.shape[-2] - b, :]


def ssim(pred: Array, target: Array, data_range: float = 1.0) -> Array:
  """Mean SSIM of each image (per channel, then averaged over channels).

  Args:
    pred: [..., H, W, C].
    target: [..., H, W, C].
    data_range: peak value L.

  Returns:
    [...] SSIM, one per image.
  """
  return jnp.mean(ssim_map(pred, target, data_range), axis=(-3, -2, -1))


def weighted_ssim(pred: Array, target: Array, mask: Array, data_range: float = 1.0) -> Array:
  """SSIM map averaged over mask positions (the official weighted SSIM).

  Each map position is weighted by the mask value of its centre pixel; only
  valid positions exist, so mask pixels within 5 px of the border do not count.

  Args:
    pred: [..., H, W, C].
    target: [..., H, W, C].
    mask: [..., H, W, 1] or [..., H, W, C], 1 = blurred.
    data_range: peak value L.

  Returns:
    [...] weighted SSIM; NaN if no mask pixel lies in the valid region.
  """
  value, _ = _weighted_mean(ssim_map(pred, target, data_range), crop_to_ssim_map(mask))
  return value


# ----------------------------------------------------------------------------
# Window pruning.


def upsample_decision(decision: Array, height: int, width: int, shifted: bool = False) -> Array:
  """Nearest up-sampling of a window keep map to pixels.

  Args:
    decision: [B, gh, gw] keep map over the window grid (1 = kept).
    height: image height H, a multiple of gh.
    width: image width W, a multiple of gw.
    shifted: the map comes from a shifted block, whose windows were cut from
      the features rolled by half a window; roll the pixels back so each kept
      window lands where its content was. The official visualisation ignores
      the shift (False).

  Returns:
    [B, H, W] map, same dtype as ``decision``.
  """
  gh, gw = decision.shape[-2:]
  if height % gh or width % gw:
    raise ValueError(
      f'image {height}x{width} is not a whole number of windows of the {gh}x{gw} grid'
    )
  fh, fw = height // gh, width // gw
  up = jnp.repeat(jnp.repeat(decision, fh, axis=-2), fw, axis=-1)
  if shifted:
    up = jnp.roll(up, (fh // 2, fw // 2), axis=(-2, -1))
  return up


def pruning_confusion(
  decision: Array, mask: Array, valid: Array | None = None, shifted: bool = False
) -> dict[str, Array]:
  """Pixel confusion counts of one keep map against the blur mask.

  Positive = kept pixel (its window was kept); truth = blurred pixel.

  Args:
    decision: [B, gh, gw] keep map in {0, 1}, or in [0, 1]: a share of passes
      that kept the window (a self-ensemble), counted as that share of a pixel.
    mask: [B, H, W, 1] blur mask in {0, 1}.
    valid: optional [B, H, W, 1] map of pixels to count (e.g. 0 on the
      padding added to reach a multiple of 128).
    shifted: see `upsample_decision`.

  Returns:
    dict with 'tp', 'fp', 'fn', 'tn', each [B] float32 pixel counts.
  """
  height, width = mask.shape[-3], mask.shape[-2]
  kept = upsample_decision(jnp.asarray(decision, jnp.float32), height, width, shifted)
  blurred = (mask[..., 0] > 0).astype(jnp.float32)
  weight = (
    jnp.ones(blurred.shape, jnp.float32)
    if valid is None
    else (valid[..., 0] > 0).astype(jnp.float32)
  )

  def count(a):
    return jnp.sum(a * weight, axis=(-2, -1))

  return {
    'tp': count(kept * blurred),
    'fp': count(kept * (1 - blurred)),
    'fn': count((1 - kept) * blurred),
    'tn': count((1 - kept) * (1 - blurred)),
  }


def pruning_metrics(
  decisions: Sequence[Array],
  mask: Array,
  valid: Array | None = None,
  shifted: Sequence[bool] | None = None,
) -> dict[str, Array]:
  """Precision, recall, accuracy and kept fraction of every pruning block.

  precision = TP / (TP + FP): share of kept pixels that are blurred (the
  paper's appendix B.1 measure); recall = TP / (TP + FN): share of blurred
  pixels kept; accuracy = (TP + TN) / pixels. An image without blurred
  pixels has neither (NaN: nothing to find, left out of means); as in the
  official code, a block that kept nothing of a blurred image has precision 0.

  Args:
    decisions: the model's tuple of [B, gh_k, gw_k] keep maps, network order
      (values in [0, 1], see `pruning_confusion`).
    mask: [B, H, W, 1] blur mask in {0, 1}, at the resolution of the input.
    valid: optional [B, H, W, 1] map of pixels to count.
    shifted: optional per-block flags, see `upsample_decision`.

  Returns:
    dict of [B, n_blocks] float32 arrays: 'precision', 'recall', 'accuracy',
    'kept_fraction' (fraction of the block's windows kept, the share of work
    it does).
  """
  if shifted is None:
    shifted = [False] * len(decisions)
  if len(shifted) != len(decisions):
    raise ValueError('need one shifted flag per decision map')
  if not decisions:
    empty = jnp.zeros((mask.shape[0], 0), jnp.float32)
    return {k: empty for k in ('precision', 'recall', 'accuracy', 'kept_fraction')}
  out: dict[str, list] = {'precision': [], 'recall': [], 'accuracy': [], 'kept_fraction': []}
  for d, s in zip(decisions, shifted):
    c = pruning_confusion(d, mask, valid, s)
    tp, fp, fn, tn = c['tp'], c['fp'], c['fn'], c['tn']
    blurred = tp + fn > 0
    out['precision'].append(
      jnp.where(blurred, jnp.where(tp + fp > 0, tp / jnp.maximum(tp + fp, 1), 0.0), jnp.nan)
    )
    out['recall'].append(jnp.where(blurred, tp / jnp.maximum(tp + fn, 1), jnp.nan))
    out['accuracy'].append((tp + tn) / jnp.maximum(tp + fp + fn + tn, 1))
    out['kept_fraction'].append(jnp.mean(jnp.asarray(d, jnp.float32), axis=(-2, -1)))
  return {k: jnp.stack(v, axis=-1) for k, v in out.items()}
