"""Training losses: blur-weighted reconstruction and the pruning loss.

All functions are pure jnp on NHWC batches and return scalars (batch means).
They compute in float32 whatever the input dtype.

Reconstruction (paper eq. 9, following LBAG). The paper's formula did not
survive text extraction; what is implemented follows the loss helpers shipped
in the official repository (``utils/image_utils.py``), which carry the paper's
weights 1.0 (L1), 1.0 (SSIM), 0.1 (FFT):
  * L1 and SSIM are weighted by the blur mask: per image, the mean over mask
    pixels only (for SSIM, over SSIM-map positions whose centre pixel is in
    the mask). Sharp regions therefore enter these two terms not at all.
  * The FFT term is unweighted: the mean absolute difference between the
    ``rfft2`` spectra (unnormalised, over H and W) of output and target.
  * The official helper uses ``-SSIM``; ``1 - SSIM`` is used here, which has the
    same gradient and is 0 for a perfect output.
  * Empty masks (an image with no blurred pixel): the official helper returns
    0 for that image (L1 and SSIM then ignore it). Here the image falls back to
    the plain, unweighted mean, so crops of sharp regions still teach the
    network to leave sharp content alone. GoPro masks are all ones, so both
    choices agree there.

Pruning loss (paper eq. 8, formula also lost): see `pruning_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lmdvit_jax import metrics

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the loss terms (paper / official helper values by default).

  ``prune``: the paper's total loss (eq. 7) adds the pruning loss to the
  reconstruction loss; its weight was lost with the formula, 1.0 is used.
  ``sharp``: not in the paper (0 by default): L1 over the pixels outside the
  blur mask (`sharp_l1_loss`), which the mask-weighted terms never see;
  ``sharp_margin`` is its free error.
  """

  l1: float = 1.0
  ssim: float = 1.0
  fft: float = 0.1
  prune: float = 1.0
  sharp: float = 0.0
  sharp_margin: float = 0.0


# The built-in terms (`total_loss`) and the settings beside their weights in
# `config.loss`.
BUILTIN_TERMS = ('l1', 'ssim', 'fft', 'prune', 'sharp')
SETTINGS = ('fft_mode', 'hard_targets', 'prune_balanced', 'sharp_margin')

# Further terms by name: (model outputs, batch) -> unweighted scalar. One enters
# the loss with the weight `config.loss.NAME` (0 or absent: left out, not
# computed) and is logged under NAME; docs/extending.md adds one.
EXTRA_TERMS: dict[str, Callable[[Any, Mapping[str, Array]], Array]] = {}


def _f32(x: Array) -> Array:
  return jnp.asarray(x, jnp.float32)


def _masked_mean_or_mean(values: Array, mask: Array | None) -> Array:
  """Per-image mean over mask positions, or over all positions if the mask is
  None or empty for that image. [..., H, W, C] -> [...]."""
  plain = jnp.mean(values, axis=(-3, -2, -1))
  if mask is None:
    return plain
  weighted, total = metrics._weighted_mean(values, mask)
  return jnp.where(total > 0, weighted, plain)


def l1_loss(pred: Array, target: Array, mask: Array | None = None) -> Array:
  """Mean absolute error, averaged over the blur mask when one is given.

  Args:
    pred: [B, H, W, C].
    target: [B, H, W, C].
    mask: optional [B, H, W, 1] blur mask (1 = blurred); per image, the error
      is averaged over mask pixels and channels; an empty mask falls back to
      the plain mean.

  Returns:
    scalar, the batch mean.
  """
  err = jnp.abs(_f32(pred) - _f32(target))
  return jnp.mean(_masked_mean_or_mean(err, mask))


def sharp_l1_loss(pred: Array, target: Array, mask: Array, margin: float = 0.0) -> Array:
  """Mean absolute error beyond `margin` over the pixels outside the blur mask.

  The mask-weighted L1 and SSIM never see sharp regions, so nothing in them
  stops a network from disturbing pixels that need no restoration; this term
  does. Images whose mask covers everything contribute 0.

  With `margin` half an 8-bit step (0.5 / 255), errors that vanish when the
  output is saved as 8 bits cost nothing: a plain L1 with a large weight pulls
  every residual to exactly zero, inside the mask too (measured: a network
  that outputs its input, 0.000 dB gained after 500 steps), while the hinge
  only penalises visible damage.

  Args:
    pred: [B, H, W, C].
    target: [B, H, W, C].
    mask: [B, H, W, 1] blur mask (1 = blurred).
    margin: errors up to this are free.

  Returns:
    scalar, the batch mean.
  """
  err = jnp.maximum(jnp.abs(_f32(pred) - _f32(target)) - margin, 0.0)
  mean, total = metrics._weighted_mean(err, 1.0 - _f32(mask))
  return jnp.mean(jnp.where(total > 0, mean, 0.0))


def ssim_loss(pred: Array, target: Array, mask: Array | None = None) -> Array:
  """``1 - SSIM`` with the metric's SSIM (`metrics.ssim_map`), mask-weighted.

  Args:
    pred: [B, H, W, C] in [0, 1], H and W at least 11.
    target: [B, H, W, C].
    mask: optional [B, H, W, 1]; per image, the SSIM map is averaged over the
      positions whose centre pixel is blurred (as `metrics.weighted_ssim`); if
      none is, over all positions (as `metrics.ssim`).

  Returns:
    scalar, the batch mean of ``1 - SSIM``.
  """
  smap = metrics.ssim_map(_f32(pred), _f32(target))
  crop = None if mask is None else jnp.asarray(metrics.crop_to_ssim_map(_f32(mask)))
  return jnp.mean(1.0 - _masked_mean_or_mean(jnp.asarray(smap), crop))


def _safe_abs(re: Array, im: Array) -> Array:
  """Complex modulus with a zero (not NaN) gradient at 0."""
  sq = re * re + im * im
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def fft_loss(pred: Array, target: Array, mode: str = 'modulus') -> Array:
  """Mean absolute difference of the spatial ``rfft2`` spectra (unweighted).

  The spectra are unnormalised (``norm='backward'``, as torch's default), over
  the H and W axes, W halved by the real FFT.

  Args:
    pred: [B, H, W, C].
    target: [B, H, W, C].
    mode: 'modulus' averages ``|F(pred) - F(target)|``, the complex modulus of
      the difference: this is what the official helper computes (torch's L1
      loss on complex tensors takes the modulus). 'parts' averages
      ``|dRe|`` and ``|dIm|`` as separate real numbers (L1 on the stacked real
      and imaginary parts, as MIMO-UNet style FFT losses do).

  Returns:
    scalar.
  """
  diff = jnp.fft.rfft2(_f32(pred), axes=(-3, -2)) - jnp.fft.rfft2(_f32(target), axes=(-3, -2))
  if mode == 'modulus':
    return jnp.mean(_safe_abs(diff.real, diff.imag))
  if mode == 'parts':
    return 0.5 * (jnp.mean(jnp.abs(diff.real)) + jnp.mean(jnp.abs(diff.imag)))
  raise ValueError(f"mode must be 'modulus' or 'parts', got {mode!r}")


def downsample_mask(mask: Array, height: int, width: int) -> Array:
  """Average-pools a [B, H, W, 1] mask to [B, height, width] blur fractions.

  H and W must be multiples of height and width (token grids of the U-net are
  the input divided by a power of two).
  """
  b, h, w = mask.shape[0], mask.shape[-3], mask.shape[-2]
  if h % height or w % width:
    raise ValueError(f'mask {h}x{w} does not pool to {height}x{width}')
  m = _f32(mask[..., 0]).reshape(b, height, h // height, width, w // width)
  return m.mean(axis=(2, 4))


def pruning_loss(
  scores: Sequence[Array], mask: Array, hard_targets: bool = False, balanced: bool = False
) -> Array:
  """Cross-entropy between each predictor's keep probability and the blur mask.

  For a predictor with token logits ``s`` [B, h, w, 2] (channel 0 = keep /
  blurry, channel 1 = prune), ``p = softmax(s)[..., 0]`` and the target ``t``
  is the mask average-pooled to the [h, w] token grid (the fraction of the
  token's pixels that are blurred). The loss is the binary cross-entropy
  ``-(t log p + (1 - t) log(1 - p))``, computed from log-softmax for stability,
  averaged over tokens and images, then over predictors.

  Why soft targets by default: at full resolution the pooled mask is already
  binary, so nothing changes there; on coarse grids a token straddling a blur
  boundary is asked for a keep probability equal to its blurred share instead
  of a hard 0 or 1 decided by a 0.5 threshold, which would teach the predictor
  to prune tokens that are up to half blurred. Cross-entropy with soft targets
  is minimised exactly at ``p = t``. ``hard_targets=True`` thresholds the
  pooled mask at 0.5 instead.

  Class balance (``balanced=True``, not in the paper): where blur covers a few
  percent of the image, pruning everything is a cheap optimum of the plain
  cross-entropy. Balanced, the blurred and the sharp side each weigh half,
  whatever their share of the batch's tokens: the two sums are divided by
  twice their total target mass (``sum t`` and ``sum (1 - t)``).

  Args:
    scores: tuple of [B, h_k, w_k, 2] token logits in the unrolled grid, one per
      confidence predictor (may be empty: the loss is then 0).
    mask: [B, H, W, 1] blur mask, H and W multiples of every h_k, w_k.
    hard_targets: threshold the pooled mask at 0.5.
    balanced: weigh the blurred and the sharp side equally (see above).

  Returns:
    scalar.
  """
  if not scores:
    return jnp.zeros((), jnp.float32)
  losses = []
  for s in scores:
    t = downsample_mask(mask, s.shape[-3], s.shape[-2])
    if hard_targets:
      t = (t >= 0.5).astype(jnp.float32)
    logp = jax.nn.log_softmax(_f32(s), axis=-1)
    keep, prune = t * logp[..., 0], (1.0 - t) * logp[..., 1]
    if balanced:
      pos, neg = jnp.sum(t), jnp.sum(1.0 - t)
      losses.append(
        -(
          jnp.sum(keep) / (2 * jnp.maximum(pos, 1e-6))
          + jnp.sum(prune) / (2 * jnp.maximum(neg, 1e-6))
        )
      )
    else:
      losses.append(-jnp.mean(keep + prune))
  return jnp.mean(jnp.stack(losses))


def total_loss(
  outputs: Any,
  batch: Mapping[str, Array],
  weights: Any = LossWeights(),
  fft_mode: str = 'modulus',
  hard_targets: bool = False,
  balanced: bool = False,
) -> tuple[Array, dict[str, Array]]:
  """Weighted sum of the reconstruction and pruning terms.

  Args:
    outputs: model output with ``restored`` [B, H, W, 3] and ``scores`` (tuple
      of [B, h, w, 2] token logits).
    batch: dict with ``sharp`` [B, H, W, 3] and ``mask`` [B, H, W, 1].
    weights: anything with float attributes ``l1``, ``ssim``, ``fft``,
      ``prune`` and optionally ``sharp`` and the names of `EXTRA_TERMS` (0 if
      absent): a `LossWeights` or the ConfigDict `config.loss`.
    fft_mode: see `fft_loss`.
    hard_targets, balanced: see `pruning_loss`.

  Returns:
    (loss, terms): the scalar loss and a dict of the unweighted scalar terms
    'l1', 'ssim', 'fft', 'prune', 'sharp' and each weighted extra term.
  """
  pred, target, mask = outputs.restored, batch['sharp'], batch['mask']
  terms = {
    'l1': l1_loss(pred, target, mask),
    'ssim': ssim_loss(pred, target, mask),
    'fft': fft_loss(pred, target, mode=fft_mode),
    'prune': pruning_loss(tuple(outputs.scores), mask, hard_targets, balanced),
    'sharp': sharp_l1_loss(pred, target, mask, getattr(weights, 'sharp_margin', 0.0)),
  }
  terms.update(
    {
      name: term(outputs, batch)
      for name, term in EXTRA_TERMS.items()
      if getattr(weights, name, 0.0)
    }
  )
  # Terms weighted 0 stay out of the sum, so no backward pass is built for them.
  loss = sum(getattr(weights, k, 0.0) * v for k, v in terms.items() if getattr(weights, k, 0.0))
  return jnp.asarray(loss), terms
