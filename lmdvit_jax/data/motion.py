"""Motion during the exposure: object trajectories, camera-shake paths, and
the blur kernels they draw."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import fft as sp_fft

TRAJECTORY_KINDS = ('linear', 'random_walk', 'curved')  # `random_trajectory`'s.
# Kinds a BlurSettings may name: 'shake' is `shake_trajectory` (uneven speed).
MOTION_KINDS = TRAJECTORY_KINDS + ('shake',)


def random_trajectory(
  rng: np.random.Generator, length: float, kind: str | None = None
) -> np.ndarray:
  """Object positions during the exposure, [N, 2] (dy, dx) in pixels.

  Constant speed along a path of arc length `length`; samples are at most 1/4 px
  apart and the middle sample (mid-exposure) is at the origin.
  """
  kind = kind or TRAJECTORY_KINDS[rng.integers(len(TRAJECTORY_KINDS))]
  n = int(np.ceil(4 * length)) | 1  # Odd, so there is a middle sample.
  theta0 = rng.uniform(0, 2 * np.pi)
  if kind == 'linear':
    headings = np.full(n - 1, theta0)
  elif kind == 'curved':
    turn = rng.uniform(np.pi / 6, np.pi) * rng.choice([-1, 1])
    headings = theta0 + turn * np.linspace(-0.5, 0.5, n - 1)
  elif kind == 'random_walk':
    # Heading changes smoothly: integrated noise, so the path wiggles, not jitters.
    knots = rng.normal(0, 1.2, size=8).cumsum()
    headings = theta0 + np.interp(np.linspace(0, 7, n - 1), np.arange(8), knots - knots.mean())
  else:
    raise ValueError(f'kind must be one of {TRAJECTORY_KINDS}, got {kind!r}')
  step = length / (n - 1)
  steps = step * np.stack([np.sin(headings), np.cos(headings)], axis=1)
  path = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
  return path - path[n // 2]


def shake_trajectory(rng: np.random.Generator, length: float) -> np.ndarray:
  """Camera-shake-like positions [N, 2] (dy, dx) at equal times: the velocity
  random-walks with inertia, so the kernel is heavier where the path slowed
  down; scaled to arc length `length`, mid-exposure at the origin."""
  n = int(np.ceil(6 * length)) | 1
  velocity = rng.normal(0, 1, 2)
  pushes = []
  for _ in range(n - 1):
    velocity = 0.85 * velocity + rng.normal(0, 0.6, 2)  # inertia, then a push
    pushes.append(velocity.copy())
  steps = np.asarray(pushes)
  steps *= length / max(np.linalg.norm(steps, axis=1).sum(), 1e-9)
  path = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
  return path - path[n // 2]


def trajectory_kernel(points: np.ndarray) -> np.ndarray:
  """Splats a trajectory (bilinear) into a normalised kernel, [k, k] float32.

  `k` is odd and the kernel centre is the trajectory origin (mid-exposure), so
  convolving the object with it keeps the object's mid-exposure position.
  """
  r = int(np.ceil(np.abs(points).max(initial=0.0))) + 1
  k = 2 * r + 1
  p = points + r
  y0, x0 = np.floor(p[:, 0]).astype(int), np.floor(p[:, 1]).astype(int)
  fy, fx = p[:, 0] - y0, p[:, 1] - x0
  kernel = np.zeros(k * k, np.float64)
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      np.add.at(kernel, (y0 + dy) * k + (x0 + dx), wy * wx)
  square = kernel.reshape(k, k)
  square[square < 1e-6 * square.max()] = 0.0  # Drop splat crumbs: a crisp support.
  return (square / square.sum()).astype(np.float32)


def full_convolve(
  x: np.ndarray, kernels: Sequence[np.ndarray], channels: Sequence[slice]
) -> list[np.ndarray]:
  """'Full' 2-D convolutions of channel groups of x [h, w, c] by FFT."""
  h, w = x.shape[:2]
  k = kernels[0].shape[0]
  shape = (sp_fft.next_fast_len(h + k - 1, real=True), sp_fft.next_fast_len(w + k - 1, real=True))
  fx = sp_fft.rfft2(x, s=shape, axes=(0, 1))
  out = []
  for kernel, sl in zip(kernels, channels):
    fk = sp_fft.rfft2(kernel, s=shape)[:, :, None]
    y = sp_fft.irfft2(fx[:, :, sl] * fk, s=shape, axes=(0, 1))
    out.append(y[: h + k - 1, : w + k - 1])
  return out
