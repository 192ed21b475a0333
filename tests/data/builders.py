"""Builders of small data sets on disk in each layout the readers know (test helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def save(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  a = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
  Image.fromarray(a).save(path, format=fmt)
  return path


def noisy_grey_mask(binary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A 0/1 mask as an annotation tool might save it: 0..40 and 215..255, grey edges."""
  m = np.where(binary, rng.integers(215, 256, binary.shape), rng.integers(0, 41, binary.shape))
  return m.astype(np.uint8)


def make_triple(rng, h, w, box=None):
  sharp = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  blur = sharp.copy()
  mask = np.zeros((h, w), bool)
  if box is not None:
    y0, y1, x0, x1 = box
    blur[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    mask[y0:y1, x0:x1] = True
  return blur, sharp, mask


def build_reloblur(root: Path, counts=None, size=(24, 32), seed=0) -> dict:
  """dataset/{split}/<scene>/<seq>/<idx>_{sharp,blur}.png + masks/{split}/.../<idx>.png.

  Returns {split: {name: (blur, sharp, mask bool [H, W])}}. The last test image
  has an empty mask.
  """
  counts = counts or {'train': 3, 'test': 2}
  rng = np.random.default_rng(seed)
  truth = {}
  for split, n in counts.items():
    truth[split] = {}
    for i in range(n):
      scene, seq, idx = f'scene{i % 2}', f'seq{i}', f'{i:05d}'
      box = None if (split == 'test' and i == n - 1) else (4, 12, 5 + i, 20 + i)
      blur, sharp, mask = make_triple(rng, *size, box)
      folder = root / 'dataset' / split / scene / seq
      save(folder / f'{idx}_sharp.png', sharp)
      save(folder / f'{idx}_blur.png', blur)
      save(root / 'masks' / split / scene / seq / f'{idx}.png', noisy_grey_mask(mask, rng))
      truth[split][f'{scene}/{seq}/{idx}'] = (blur, sharp, mask)
  return truth


def build_gopro(
  root: Path, layout='sequences', splits=('train', 'test'), n=2, size=(16, 24), seed=0
) -> dict:
  """GOPRO_Large/{split}/<seq>/{blur,blur_gamma,sharp}/ or {split}/{input,target}/ trees.

  Returns {split: {name: (blur, blur_gamma, sharp)}}.
  """
  rng = np.random.default_rng(seed)
  truth = {}
  for split in splits:
    truth[split] = {}
    for s in range(2 if layout == 'sequences' else 1):
      for f in range(n):
        blur, gamma, sharp = (rng.integers(0, 256, size + (3,), dtype=np.uint8) for _ in range(3))
        frame = f'{f:06d}.png'
        if layout == 'sequences':
          seq = root / 'GOPRO_Large' / split / f'GOPR0{s}'
          save(seq / 'blur' / frame, blur)
          save(seq / 'blur_gamma' / frame, gamma)
          save(seq / 'sharp' / frame, sharp)
          truth[split][f'GOPR0{s}/{f:06d}'] = (blur, gamma, sharp)
        else:  # Restormer-style flat: Datasets/{split}/GoPro/{input,target}.
          base = root / split / 'GoPro'
          save(base / 'input' / frame, blur)
          save(base / 'target' / frame, sharp)
          truth[split][f'{f:06d}'] = (blur, None, sharp)
  return truth


def build_npy(root: Path, n=3, size=(20, 28), seed=0, sparse=True) -> dict:
  """The LMD-ViT evaluation format; masks alternate scipy sparse / dense 0-1 / dense 0-255."""
  import scipy.sparse

  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  truth = {}
  for i in range(n):
    blur, sharp, mask = make_triple(rng, *size, (2, 9, 3, 15))
    kind = i % 3 if sparse else 1 + i % 2
    stored = (
      scipy.sparse.csr_matrix(mask.astype(np.float32))
      if kind == 0
      else mask.astype(np.uint8)
      if kind == 1
      else mask.astype(np.uint8) * 255
    )
    np.save(
      root / f'img{i:03d}.npy',
      {'img_blur': blur, 'img_gt': sharp, 'blur_mask': stored},
      allow_pickle=True,
    )
    truth[f'img{i:03d}'] = (blur, sharp, mask)
  return truth
