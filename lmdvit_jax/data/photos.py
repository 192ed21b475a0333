"""Sharp photographs for synthetic data: named sets shipped inside PyPI
packages, procedural dead leaves, or a folder of the user's own, each split
into disjoint train, val and test photos.

`PHOTO_SETS`: scikit-image's RGB and grey photographs (the default), or those
and more from scikit-learn, matplotlib, mahotas and PyWavelets, read as files
from the installed packages (found without importing them, never downloaded).
Neither a validation set (for choosing weights) nor a held-out test set shows
a training photo. `photo_pool(source, split)` names any of them, or several
joined by ','.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import importlib.util
import os
from pathlib import Path
import zlib

import numpy as np

from lmdvit_jax import image_io
from lmdvit_jax.data import dead_leaves
from lmdvit_jax.data.examples import DataError

# Sharp photographs shipped as files inside PyPI packages (read from the
# installed package, found without importing it; never downloaded):
# name -> (package, path inside it). Photos of the same scene (the two
# motorcycle views) stay in the same split.
PACKAGE_PHOTOS = {
  'astronaut': ('skimage', 'data/astronaut.png'),
  'coffee': ('skimage', 'data/coffee.png'),
  'rocket': ('skimage', 'data/rocket.jpg'),
  'motorcycle_left': ('skimage', 'data/motorcycle_left.png'),
  'motorcycle_right': ('skimage', 'data/motorcycle_right.png'),
  'hubble_deep_field': ('skimage', 'data/hubble_deep_field.jpg'),
  'immunohistochemistry': ('skimage', 'data/ihc.png'),
  'camera': ('skimage', 'data/camera.png'),
  'brick': ('skimage', 'data/brick.png'),
  'grass': ('skimage', 'data/grass.png'),
  'moon': ('skimage', 'data/moon.png'),
  'chelsea': ('skimage', 'data/chelsea.png'),
  'coins': ('skimage', 'data/coins.png'),
  'gravel': ('skimage', 'data/gravel.png'),
  'china': ('sklearn', 'datasets/images/china.jpg'),
  'flower': ('sklearn', 'datasets/images/flower.jpg'),
  'grace_hopper': ('matplotlib', 'mpl-data/sample_data/grace_hopper.jpg'),
  'department_store': ('mahotas', 'demos/data/DepartmentStore.jpg'),
  'luispedro': ('mahotas', 'demos/data/luispedro.jpg'),
  'aero': ('pywt', 'data/aero.npz'),
  'ascent': ('pywt', 'data/ascent.npz'),
}
# PyPI distribution of each package, for the error that names what to install.
_DISTRIBUTIONS = {
  'skimage': 'scikit-image',
  'sklearn': 'scikit-learn',
  'matplotlib': 'matplotlib',
  'mahotas': 'mahotas',
  'pywt': 'PyWavelets',
}
TEST_PHOTOS = ('chelsea', 'coins', 'gravel')
# Validation photos: in no set's training split, so that weights are chosen on
# photos the model never saw (and never on the test photos). The same for every set.
VAL_PHOTOS = ('flower', 'department_store', 'ascent')
# Named photo sets of the `photos` option, train and test photos: 'skimage'
# (scikit-image's 14 photos) and 'packages' (those and 4 more from other
# packages; the same test photos).
PHOTO_SETS = {
  'skimage': tuple(n for n, (package, _) in PACKAGE_PHOTOS.items() if package == 'skimage'),
  'packages': tuple(n for n in PACKAGE_PHOTOS if n not in VAL_PHOTOS),
}
DEFAULT_PHOTO_SET = 'skimage'

_SPLIT_CODES = {'train': 0, 'test': 1, 'val': 2}
SPLITS = tuple(_SPLIT_CODES)


def _package_file(package: str, path: str) -> Path:
  spec = importlib.util.find_spec(package)  # Locates the package without running it.
  if spec is None or not spec.submodule_search_locations:
    raise DataError(
      f'The photo {path} ships with the Python package {package!r}, which is '
      f'not installed: pip install {_DISTRIBUTIONS.get(package, package)} (or the '
      "project's extra: pip install -e '.[photos]')"
    )
  return Path(list(spec.submodule_search_locations)[0]) / path


@functools.cache
def _package_photo(name: str) -> np.ndarray:
  """A photo of `PACKAGE_PHOTOS` as uint8 `[H, W, 3]` (grey replicated)."""
  file = _package_file(*PACKAGE_PHOTOS[name])
  if file.suffix != '.npz':
    return image_io.load_rgb(file)
  with np.load(file) as arrays:  # PyWavelets keeps its photos as one grey array.
    grey = np.asarray(arrays[arrays.files[0]]).clip(0, 255).astype(np.uint8)
  return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


class PhotoPool(Sequence):
  """Named sharp photographs, uint8 [H, W, 3], decoded on first use and cached."""

  def __init__(self, names: Sequence[str], loader, description: str):
    if not names:
      raise DataError(f'No photographs in {description}.')
    self.names = tuple(names)
    self._loader = loader
    self.description = description

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]  # no slices
    return self._loader(self.names[index])

  def __repr__(self) -> str:
    return f'PhotoPool({self.description}: {len(self)} photos)'


def package_photos(split: str = 'train', photo_set: str = DEFAULT_PHOTO_SET) -> PhotoPool:
  """A named set of `PHOTO_SETS`, split into `train`, `val` (`VAL_PHOTOS`), `test`
  (`TEST_PHOTOS`) or `all` (train and test)."""
  if photo_set not in PHOTO_SETS:
    raise ValueError(f'Unknown photo set {photo_set!r}; accepted: {sorted(PHOTO_SETS)}')
  every = PHOTO_SETS[photo_set]
  names = {
    'train': tuple(n for n in every if n not in TEST_PHOTOS),
    'val': VAL_PHOTOS,
    'test': TEST_PHOTOS,
    'all': every,
  }
  if split not in names:
    raise ValueError(f'split must be train, val, test or all, got {split!r}')
  return PhotoPool(names[split], _package_photo, f'{split} photos of the {photo_set!r} set')


@functools.lru_cache(maxsize=64)
def photo_pool(source: str, split: str) -> PhotoPool:
  """The split's pictures of a photo source: a name of PHOTO_SETS, `deadleaves`
  (procedural images, `dead_leaves`), a FOLDER, or several of these joined by
  ',' (e.g. `packages,deadleaves`)."""
  parts = source.split(',') if ',' in source and not Path(source).is_dir() else [source]
  pools = []
  for part in parts:
    if part in PHOTO_SETS:
      pools.append(package_photos(split, part))
    elif part == 'deadleaves':
      pools.append(
        PhotoPool(dead_leaves.names(split), dead_leaves.load, f'dead-leaves images ({split})')
      )
    else:
      pools.append(folder_photos(part, split))
  if len(pools) == 1:
    return pools[0]
  names = [(i, name) for i, pool in enumerate(pools) for name in pool.names]
  return PhotoPool(
    [f'{i}:{name}' for i, name in names],
    lambda key: pools[int(key.split(':', 1)[0])]._loader(key.split(':', 1)[1]),
    ' + '.join(p.description for p in pools),
  )


def _folder_photo(path: str) -> np.ndarray:
  return image_io.load_rgb(path)


def folder_photos(
  folder: str | os.PathLike,
  split: str = 'train',
  test_fraction: float = 0.2,
  val_fraction: float = 0.1,
) -> PhotoPool:
  """Sharp photographs from a folder (recursive), split by a hash of their names.

  A photo's split depends only on its relative path, so adding photos never
  moves existing ones between splits. With at least two photos train and test
  get at least one each; val gets the photos whose hash falls in the next
  `val_fraction` after test's, never the last training photo (a folder too
  small for one is an error when val is asked for).
  """
  files = image_io.list_images(folder)
  if not files:
    raise DataError(f'No image files ({", ".join(image_io.IMAGE_SUFFIXES)}) in {folder}.')
  keys = sorted(files)
  score = {k: zlib.crc32(k.encode()) / 2**32 for k in keys}
  test = {k for k in keys if score[k] < test_fraction}
  if len(keys) >= 2 and not test:
    test = {min(keys, key=score.__getitem__)}
  if len(keys) >= 2 and len(test) == len(keys):
    test.discard(max(keys, key=score.__getitem__))
  val = {k for k in keys if k not in test and score[k] < test_fraction + val_fraction}
  if val and len(test) + len(val) == len(keys):
    val.discard(max(val, key=score.__getitem__))
  chosen = {
    'train': [k for k in keys if k not in test and k not in val],
    'val': [k for k in keys if k in val],
    'test': [k for k in keys if k in test],
    'all': keys,
  }
  if split not in chosen:
    raise ValueError(f'split must be train, val, test or all, got {split!r}')
  if not chosen[split]:
    raise DataError(
      f'{folder} has no {split} photos ({len(keys)} photos in all; a photo '
      f'goes to {split} by a hash of its path, so add more photos).'
    )
  paths = {k: str(files[k]) for k in keys}
  return PhotoPool(chosen[split], lambda k: _folder_photo(paths[k]), f'{split} photos of {folder}')
