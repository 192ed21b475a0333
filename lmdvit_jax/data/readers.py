"""Readers for the dataset layouts found on disk.

Each reader is a `Source`: `len(src)`, `src[i]` -> float32 sample with `name`,
`src.example(i)` -> uint8 example (see `examples.py`). Files are listed when the
reader is made (so a wrong folder fails at once) and read on access.

Layouts:
  reloblur  DIR/dataset/{train,test}/<scene>/<seq>/<idx>_{sharp,blur}.png and
            DIR/masks/{train,test}/<scene>/<seq>/<idx>.png (as the LBAG code).
  npy       FOLDER/*.npy, each a pickled dict: img_blur, img_gt (uint8 [H, W, 3]
            RGB), blur_mask ([H, W] dense array or scipy sparse matrix).
  gopro     DIR/GOPRO_Large/{train,test}/<sequence>/{blur,blur_gamma,sharp}/<frame>.png
            (or DIR/{train,test}/... directly), or the flat layout
            DIR/{train,test}[/GoPro]/{input,target}/<frame>.png; masks all ones.
  pairs     DIR/blur/, DIR/sharp/ and optional DIR/mask/ with matching relative
            names (any image suffix); without mask/ masks are all ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import logging
import os
from pathlib import Path

import numpy as np

from lmdvit_jax import image_io
from lmdvit_jax.data.examples import DataError, Example, Source, check_example

log = logging.getLogger(__name__)

DEFAULT_MASK_THRESHOLD = 0.5  # Of the mask's full scale: 128 for 8-bit masks.


def _require_dir(path: Path, what: str) -> Path:
  if not path.is_dir():
    raise FileNotFoundError(f'{what}: no such folder {path}')
  return path


def _unmatched_error(what: str, missing: list[str], where: Path) -> DataError:
  shown = ', '.join(missing[:5]) + (f' and {len(missing) - 5} more' if len(missing) > 5 else '')
  return DataError(f'{len(missing)} {what} in {where}: {shown}')


def _ones_mask(image: np.ndarray) -> np.ndarray:
  return np.ones(image.shape[:2] + (1,), np.uint8)


class FileTriplesSource(Source):
  """Examples from (name, blur file, sharp file, mask file or None) tuples."""

  def __init__(
    self,
    triples: Sequence[tuple[str, Path, Path, Path | None]],
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
    description: str = '',
  ):
    if not triples:
      raise DataError(f'No image pairs found{" in " + description if description else ""}.')
    self.triples = triples
    self.mask_threshold = mask_threshold
    self.description = description
    self._warned_empty: set[str] = set()

  @property
  def names(self) -> list[str]:
    return [t[0] for t in self.triples]

  def __len__(self) -> int:
    return len(self.triples)

  def _example(self, index: int) -> Example:
    name, blur_path, sharp_path, mask_path = self.triples[index]
    blur = image_io.load_rgb(blur_path)
    sharp = image_io.load_rgb(sharp_path)
    if mask_path is None:
      mask = _ones_mask(sharp)
    else:
      mask = image_io.load_mask(mask_path, self.mask_threshold)
      if not mask.any() and name not in self._warned_empty:
        self._warned_empty.add(name)
        log.warning('Empty blur mask (no blurred pixel): %s', mask_path)
    files = f'{blur_path}, {sharp_path}' + (f', {mask_path}' if mask_path else '')
    return check_example({'blur': blur, 'sharp': sharp, 'mask': mask, 'name': name}, files)

  def check_sizes(self) -> None:
    """Compares image sizes of every triple from file headers (fast, no decoding)."""
    for name, *paths in self.triples:
      sizes = [image_io.image_size(p) for p in paths if p is not None]
      if len(set(sizes)) != 1:
        raise DataError(
          f'Size mismatch in {name}: '
          + ', '.join(f'{p} {h}x{w}' for p, (h, w) in zip([p for p in paths if p], sizes))
        )

  def empty_masks(self) -> list[str]:
    """Names whose mask has no blurred pixel (reads every mask)."""
    return [
      name
      for name, _, _, m in self.triples
      if m is not None and not image_io.load_mask(m, self.mask_threshold).any()
    ]

  def __repr__(self) -> str:
    return f'{type(self).__name__}({len(self)} examples from {self.description})'


class ReLoBlurSource(FileTriplesSource):
  """ReLoBlur laid out for the LBAG code (see module docstring)."""

  def __init__(
    self,
    root: str | os.PathLike,
    split: str = 'train',
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
  ):
    root = Path(root)
    images = _require_dir(
      root / 'dataset' / split,
      f'ReLoBlur {split} images (expected DIR/dataset/{split}/<scene>/<seq>/<idx>_sharp.png)',
    )
    masks = _require_dir(
      root / 'masks' / split,
      f'ReLoBlur {split} masks (expected DIR/masks/{split}/<scene>/<seq>/<idx>.png)',
    )
    sharps = sorted(images.glob('*/*/*_sharp.png'))
    if not sharps:
      raise DataError(f'No <scene>/<seq>/<idx>_sharp.png files under {images}.')
    triples, no_blur, no_mask = [], [], []
    for sharp in sharps:
      rel = sharp.relative_to(images).as_posix()[: -len('_sharp.png')]
      blur = sharp.with_name(sharp.name[: -len('_sharp.png')] + '_blur.png')
      # Masks are PNG in the release; re-saved copies may be JPEG.
      mask = next(
        (m for m in (masks / (rel + s) for s in image_io.IMAGE_SUFFIXES) if m.is_file()),
        masks / (rel + '.png'),
      )
      if not blur.is_file():
        no_blur.append(rel)
      if not mask.is_file():
        no_mask.append(rel)
      triples.append((rel, blur, sharp, mask))
    if no_blur:
      raise _unmatched_error('sharp images without a _blur.png', no_blur, images)
    if no_mask:
      raise _unmatched_error('images without a mask', no_mask, masks)
    extra = sorted(
      {b.relative_to(images).as_posix()[: -len('_blur.png')] for b in images.glob('*/*/*_blur.png')}
      - {t[0] for t in triples}
    )
    if extra:
      raise _unmatched_error('blurred images without a _sharp.png', extra, images)
    super().__init__(triples, mask_threshold, f'ReLoBlur {split} at {root}')


GOPRO_BLUR_KINDS = ('blur', 'blur_gamma')


def _gopro_split_dir(root: Path, split: str) -> Path:
  for candidate in (root / 'GOPRO_Large' / split, root / split / 'GoPro', root / split):
    if candidate.is_dir():
      return candidate
  if (root / 'input').is_dir() or any(root.glob('*/sharp')):
    return root  # The folder of one split itself.
  raise FileNotFoundError(
    f'GoPro {split} split not found under {root}: expected GOPRO_Large/{split}/, '
    f'{split}/, {split}/GoPro/ or input/ + target/ folders.'
  )


class GoProSource(FileTriplesSource):
  """GoPro (global blur), sequence or flat layout; masks are all ones."""

  def __init__(self, root: str | os.PathLike, split: str = 'train', blur: str = 'blur'):
    if blur not in GOPRO_BLUR_KINDS:
      raise ValueError(f'blur must be one of {GOPRO_BLUR_KINDS}, got {blur!r}')
    root = Path(root)
    _require_dir(root, 'GoPro root')
    split_dir = _gopro_split_dir(root, split)
    triples = []
    if (split_dir / 'input').is_dir() or (split_dir / 'target').is_dir():
      pairs = _match_folders(
        _require_dir(split_dir / 'input', 'GoPro blurred inputs'),
        _require_dir(split_dir / 'target', 'GoPro sharp targets'),
      )
      triples = [(name, b, s, None) for name, (b, s) in pairs.items()]
    else:
      sequences = sorted(d for d in split_dir.iterdir() if d.is_dir())
      if not sequences:
        raise DataError(f'No GoPro sequence folders in {split_dir}.')
      for seq in sequences:
        pairs = _match_folders(
          _require_dir(seq / blur, f'GoPro sequence {seq.name} ({blur}/)'),
          _require_dir(seq / 'sharp', f'GoPro sequence {seq.name} (sharp/)'),
        )
        triples += [(f'{seq.name}/{name}', b, s, None) for name, (b, s) in pairs.items()]
    super().__init__(triples, description=f'GoPro {split} ({blur}) at {split_dir}')


def _match_folders(
  blur_dir: Path, sharp_dir: Path, mask_dir: Path | None = None
) -> dict[str, tuple[Path, ...]]:
  """Matches images by relative name; every file must have its partner(s)."""
  blurs, sharps = image_io.list_images(blur_dir), image_io.list_images(sharp_dir)
  if not blurs and not sharps:
    raise DataError(f'No images in {blur_dir} or {sharp_dir}.')
  if missing := sorted(set(blurs) - set(sharps)):
    raise _unmatched_error(
      f'blurred images without a sharp image in {sharp_dir}', missing, blur_dir
    )
  if missing := sorted(set(sharps) - set(blurs)):
    raise _unmatched_error(
      f'sharp images without a blurred image in {blur_dir}', missing, sharp_dir
    )
  if mask_dir is None:
    return {k: (blurs[k], sharps[k]) for k in sorted(blurs)}
  masks = image_io.list_images(mask_dir)
  if missing := sorted(set(blurs) - set(masks)):
    raise _unmatched_error('images without a mask', missing, mask_dir)
  if missing := sorted(set(masks) - set(blurs)):
    raise _unmatched_error('masks without images', missing, mask_dir)
  return {k: (blurs[k], sharps[k], masks[k]) for k in sorted(blurs)}


class PairsSource(FileTriplesSource):
  """DIR/blur, DIR/sharp and optional DIR/mask with matching relative names."""

  def __init__(self, root: str | os.PathLike, mask_threshold: float = DEFAULT_MASK_THRESHOLD):
    root = Path(root)
    _require_dir(root, 'pairs folder')
    blur_dir = _require_dir(root / 'blur', 'pairs folder (expected blur/, sharp/, optional mask/)')
    sharp_dir = _require_dir(
      root / 'sharp', 'pairs folder (expected blur/, sharp/, optional mask/)'
    )
    mask_dir = root / 'mask' if (root / 'mask').is_dir() else None
    matched = _match_folders(blur_dir, sharp_dir, mask_dir)
    triples = [
      (name, paths[0], paths[1], paths[2] if mask_dir else None) for name, paths in matched.items()
    ]
    super().__init__(triples, mask_threshold, f'pairs at {root}')


class NpySource(Source):
  """The LMD-ViT evaluation format: one pickled-dict `.npy` per image."""

  def __init__(self, folder: str | os.PathLike, mask_threshold: float = DEFAULT_MASK_THRESHOLD):
    folder = _require_dir(Path(folder), 'npy evaluation folder')
    self.files = sorted(folder.glob('*.npy'))
    if not self.files:
      raise DataError(f'No .npy files in {folder}.')
    self.folder = folder
    self.mask_threshold = mask_threshold

  @property
  def names(self) -> list[str]:
    return [f.stem for f in self.files]

  def __len__(self) -> int:
    return len(self.files)

  def _example(self, index: int) -> Example:
    path = self.files[index]
    try:
      item = np.load(path, allow_pickle=True)
      item = item.item() if isinstance(item, np.ndarray) and item.dtype == object else item
    except Exception as e:
      raise DataError(f'Cannot read {path}: {e}') from e
    if not isinstance(item, Mapping) or not {'img_blur', 'img_gt', 'blur_mask'} <= set(item):
      keys = sorted(item) if isinstance(item, Mapping) else type(item).__name__
      raise DataError(f'{path}: expected a dict with img_blur, img_gt, blur_mask; got {keys}.')
    mask = item['blur_mask']
    if hasattr(mask, 'toarray'):  # scipy.sparse matrix or array.
      mask = mask.toarray()
    images = {}
    for key, src in (('blur', 'img_blur'), ('sharp', 'img_gt')):
      a = np.asarray(item[src])
      if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise DataError(f'{path}: {src} must be uint8 [H, W, 3], got {a.dtype} {a.shape}.')
      images[key] = a
    example = {**images, 'mask': _binarize(mask, self.mask_threshold, path), 'name': path.stem}
    return check_example(example, str(path))

  def __repr__(self) -> str:
    return f'NpySource({len(self)} examples from {self.folder})'


def _binarize(mask, threshold, path):
  try:
    return image_io.binarize_mask(np.asarray(mask), threshold)
  except DataError as e:
    raise DataError(f'{path}: {e}') from e
