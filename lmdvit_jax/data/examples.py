"""Examples, samples and the random-access `Source` every reader implements.

Two forms of the same record:

* an *example* is what is stored: `blur`, `sharp` uint8 [H, W, 3], `mask` uint8
  [H, W, 1] in {0, 1} (1 = blurred), plus a `name` string. TFDS builders write
  it and the training pipeline crops it (cropping uint8 is cheaper than float).
* a *sample* is what models see: `blur`, `sharp` float32 [H, W, 3] in [0, 1],
  `mask` float32 [H, W, 1] in {0, 1}, plus `name`.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import numpy as np

from lmdvit_jax.errors import DataError

Example = dict[str, Any]
Sample = dict[str, Any]

IMAGE_KEYS = ('blur', 'sharp', 'mask')


def check_example(example: Example, where: str = '') -> Example:
  """Checks dtypes, ranks and matching sizes of an example; returns it."""
  at = f' in {where}' if where else ''
  for key in IMAGE_KEYS:
    if key not in example:
      raise DataError(f'Missing {key!r}{at}.')
    a = example[key]
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3:
      raise DataError(
        f'{key!r}{at} must be a uint8 [H, W, C] array, got '
        f'{getattr(a, "dtype", type(a))} {np.shape(a)}.'
      )
  sizes = {k: example[k].shape[:2] for k in IMAGE_KEYS}
  if len(set(sizes.values())) != 1:
    raise DataError(
      f'Size mismatch between blur, sharp and mask{at}: '
      + ', '.join(f'{k} {h}x{w}' for k, (h, w) in sizes.items())
      + ' (height x width).'
    )
  if example['blur'].shape[2] != 3 or example['sharp'].shape[2] != 3:
    raise DataError(f'blur and sharp must have 3 channels{at}.')
  if example['mask'].shape[2] != 1:
    raise DataError(f'mask must have 1 channel{at}.')
  return example


def to_sample(example: Example) -> Sample:
  """uint8 example -> float32 sample in [0, 1] (other keys pass through)."""
  sample = dict(example)
  for key in ('blur', 'sharp'):  # One pass, the same values as astype(float32) / 255.
    sample[key] = np.divide(example[key], np.float32(255), dtype=np.float32)
  sample['mask'] = (example['mask'] > 0).astype(np.float32)
  return sample


class Source(Sequence):
  """A random-access collection of full-resolution examples.

  Subclasses implement `__len__` and `_example(index)`. Indexing a source gives
  float32 samples (with `name`); `example(index)` gives the stored uint8 form.
  Sources hold only file lists and settings, so they pickle cheaply (grain
  workers) and read lazily.
  """

  def __len__(self) -> int:
    raise NotImplementedError

  def _example(self, index: int) -> Example:
    raise NotImplementedError

  def example(self, index: int) -> Example:
    """uint8 example `index` (negative indices count from the end)."""
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f'index {index} out of range for {n} examples')
    return self._example(int(index) % n)

  def __getitem__(self, index: int) -> Sample:  # type: ignore[override]  # no slices
    return to_sample(self.example(index))

  def __repr__(self) -> str:
    return f'{type(self).__name__}({len(self)} examples)'


class GeneratedSource(Source):
  """`count` generated examples of one size, drawn from a pool of photos that
  is built on first use (in each grain worker: it is never pickled).

  Subclasses set `min_size` and implement `_photo_pool()` and `_example`.
  """

  min_size = 16

  def __init__(self, count: int, size: int | tuple[int, int], seed: int):
    if count < 1:
      raise ValueError(f'count must be positive, got {count}')
    self.num_examples = int(count)
    height, width = (size, size) if isinstance(size, int) else size
    self.size = (int(height), int(width))
    if min(self.size) < self.min_size:
      raise ValueError(f'size must be at least {self.min_size} pixels, got {self.size}')
    self.seed = int(seed)

  def _photo_pool(self) -> Sequence[np.ndarray]:
    raise NotImplementedError

  @functools.cached_property
  def photos(self) -> Sequence[np.ndarray]:
    return self._photo_pool()

  def __len__(self) -> int:
    return self.num_examples

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop('photos', None)  # Rebuilt lazily in each worker.
    return state
