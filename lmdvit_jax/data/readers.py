"""Readers for the dataset layouts found on disk, and `open_source(spec)`.

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

import dataclasses
import difflib
import logging
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lmdvit_jax.data import image_files
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

  def __init__(self, triples: list[tuple[str, Path, Path, Path | None]],
               mask_threshold: float = DEFAULT_MASK_THRESHOLD, description: str = ''):
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
    blur = image_files.load_rgb(blur_path)
    sharp = image_files.load_rgb(sharp_path)
    if mask_path is None:
      mask = _ones_mask(sharp)
    else:
      mask = image_files.load_mask(mask_path, self.mask_threshold)
      if not mask.any() and name not in self._warned_empty:
        self._warned_empty.add(name)
        log.warning('Empty blur mask (no blurred pixel): %s', mask_path)
    files = f'{blur_path}, {sharp_path}' + (f', {mask_path}' if mask_path else '')
    return check_example({'blur': blur, 'sharp': sharp, 'mask': mask, 'name': name}, files)

  def check_sizes(self) -> None:
    """Compares image sizes of every triple from file headers (fast, no decoding)."""
    for name, *paths in self.triples:
      sizes = [image_files.image_size(p) for p in paths if p is not None]
      if len(set(sizes)) != 1:
        raise DataError(f'Size mismatch in {name}: ' + ', '.join(
            f'{p} {h}x{w}' for p, (h, w) in zip([p for p in paths if p], sizes)))

  def empty_masks(self) -> list[str]:
    """Names whose mask has no blurred pixel (reads every mask)."""
    return [name for name, _, _, m in self.triples
            if m is not None and not image_files.load_mask(m, self.mask_threshold).any()]

  def __repr__(self) -> str:
    return f'{type(self).__name__}({len(self)} examples from {self.description})'


class ReLoBlurSource(FileTriplesSource):
  """ReLoBlur laid out for the LBAG code (see module docstring)."""

  def __init__(self, root: str | os.PathLike, split: str = 'train',
               mask_threshold: float = DEFAULT_MASK_THRESHOLD):
    root = Path(root)
    images = _require_dir(root / 'dataset' / split, f'ReLoBlur {split} images '
                          f'(expected DIR/dataset/{split}/<scene>/<seq>/<idx>_sharp.png)')
    masks = _require_dir(root / 'masks' / split, f'ReLoBlur {split} masks '
                         f'(expected DIR/masks/{split}/<scene>/<seq>/<idx>.png)')
    sharps = sorted(images.glob('*/*/*_sharp.png'))
    if not sharps:
      raise DataError(f'No <scene>/<seq>/<idx>_sharp.png files under {images}.')
    triples, no_blur, no_mask = [], [], []
    for sharp in sharps:
      rel = sharp.relative_to(images).as_posix()[:-len('_sharp.png')]
      blur = sharp.with_name(sharp.name[:-len('_sharp.png')] + '_blur.png')
      # Masks are PNG in the release; re-saved copies may be JPEG.
      mask = next((m for m in (masks / (rel + s) for s in image_files.IMAGE_SUFFIXES)
                   if m.is_file()), masks / (rel + '.png'))
      if not blur.is_file():
        no_blur.append(rel)
      if not mask.is_file():
        no_mask.append(rel)
      triples.append((rel, blur, sharp, mask))
    if no_blur:
      raise _unmatched_error('sharp images without a _blur.png', no_blur, images)
    if no_mask:
      raise _unmatched_error('images without a mask', no_mask, masks)
    extra = sorted({b.relative_to(images).as_posix()[:-len('_blur.png')]
                    for b in images.glob('*/*/*_blur.png')} - {t[0] for t in triples})
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
      f'{split}/, {split}/GoPro/ or input/ + target/ folders.')


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
      pairs = _match_folders(_require_dir(split_dir / 'input', 'GoPro blurred inputs'),
                             _require_dir(split_dir / 'target', 'GoPro sharp targets'))
      triples = [(name, b, s, None) for name, (b, s) in pairs.items()]
    else:
      sequences = sorted(d for d in split_dir.iterdir() if d.is_dir())
      if not sequences:
        raise DataError(f'No GoPro sequence folders in {split_dir}.')
      for seq in sequences:
        pairs = _match_folders(
            _require_dir(seq / blur, f'GoPro sequence {seq.name} ({blur}/)'),
            _require_dir(seq / 'sharp', f'GoPro sequence {seq.name} (sharp/)'))
        triples += [(f'{seq.name}/{name}', b, s, None) for name, (b, s) in pairs.items()]
    super().__init__(triples, description=f'GoPro {split} ({blur}) at {split_dir}')


def _match_folders(blur_dir: Path, sharp_dir: Path,
                   mask_dir: Path | None = None) -> dict[str, tuple[Path, ...]]:
  """Matches images by relative name; every file must have its partner(s)."""
  blurs, sharps = image_files.list_images(blur_dir), image_files.list_images(sharp_dir)
  if not blurs and not sharps:
    raise DataError(f'No images in {blur_dir} or {sharp_dir}.')
  if missing := sorted(set(blurs) - set(sharps)):
    raise _unmatched_error(f'blurred images without a sharp image in {sharp_dir}', missing, blur_dir)
  if missing := sorted(set(sharps) - set(blurs)):
    raise _unmatched_error(f'sharp images without a blurred image in {blur_dir}', missing, sharp_dir)
  if mask_dir is None:
    return {k: (blurs[k], sharps[k]) for k in sorted(blurs)}
  masks = image_files.list_images(mask_dir)
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
    sharp_dir = _require_dir(root / 'sharp', 'pairs folder (expected blur/, sharp/, optional mask/)')
    mask_dir = root / 'mask' if (root / 'mask').is_dir() else None
    matched = _match_folders(blur_dir, sharp_dir, mask_dir)
    triples = [(name, *paths) if mask_dir else (name, *paths, None)
               for name, paths in matched.items()]
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
    return image_files.binarize_mask(np.asarray(mask), threshold)
  except DataError as e:
    raise DataError(f'{path}: {e}') from e


class TfdsSource(Source):
  """A split of a TFDS dataset built by this package (read with `as_data_source`)."""

  def __init__(self, name: str, split: str = 'train', data_dir: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from lmdvit_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top,unused-import
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
      raise DataError(f'Unknown TFDS dataset {name!r}: {e}') from e
    if not builder.is_prepared():
      raise DataError(f'TFDS dataset {name!r} is not built in {builder.data_dir}. Build it with: '
                      f'python -m lmdvit_jax.data.tfds_builders {name.split("/")[0]} '
                      f'--data_dir=... (see README).')
    self.name, self.split = name, split
    self._source = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self._source)

  def _example(self, index: int) -> Example:
    ex = dict(self._source[index])
    name = ex.get('name', f'{self.name}_{self.split}_{index:06d}')
    ex['name'] = name.decode() if isinstance(name, bytes) else str(name)
    return ex

  def __repr__(self) -> str:
    return f'TfdsSource({self.name}, {self.split}: {len(self)} examples)'


# ---------------------------------------------------------------------------
# Specs: "kind:PATH?key=value&key=value".

_KINDS = {
    # kind: (needs a path, accepted options)
    'npy': (True, {'threshold'}),
    'reloblur': (True, {'split', 'threshold'}),
    'gopro': (True, {'split', 'blur'}),
    'pairs': (True, {'threshold'}),
    'synthetic': (False, {'split', 'count', 'size', 'seed', 'photos', 'min_blur', 'max_blur',
                          'preset'}),
    'tfds': (True, {'split', 'data_dir'}),
}

SPEC_HELP = """Data specs:
  npy:FOLDER                 folder of LMD-ViT evaluation .npy files
  reloblur:DIR[?split=test]  DIR holds dataset/ and masks/ (LBAG layout)
  gopro:DIR[?split=test&blur=blur_gamma]   GOPRO_Large/ (or train/, test/) inside DIR
  pairs:DIR                  DIR/blur/, DIR/sharp/, optional DIR/mask/
  synthetic[?count=100&size=256&seed=0&photos=FOLDER&min_blur=2&max_blur=12&preset=realistic]
                             generated local blur (motion path lengths in pixels;
                             size=S or WxH, e.g. 384x256; preset=extreme: 8-64 px)
  tfds:NAME[?split=test&data_dir=DIR]   a built TFDS dataset (reloblur, gopro, ...)
Options: threshold=0.5 binarises masks (fraction of full scale)."""


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
  """'kind:PATH?k=v&k=v' -> (kind, path, options), validated against `_KINDS`."""
  body, _, query = spec.partition('?')
  kind, sep, path = body.partition(':')
  kind = kind.strip().lower()
  if kind not in _KINDS:
    close = difflib.get_close_matches(kind, list(_KINDS), n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(f'Unknown data kind {kind!r} in {spec!r}.{hint}\n{SPEC_HELP}')
  needs_path, allowed = _KINDS[kind]
  if needs_path and not path:
    raise ValueError(f'{kind!r} needs a path, as in {kind}:/path/to/data (got {spec!r}).\n{SPEC_HELP}')
  if not needs_path and sep:
    raise ValueError(f'{kind!r} takes no path (got {spec!r}); use options, as in '
                     f'synthetic?photos=/my/photos.\n{SPEC_HELP}')
  try:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
  except ValueError as e:
    raise ValueError(f'Malformed options {query!r} in {spec!r}: write key=value&key=value.') from e
  options = dict(pairs)
  if unknown := sorted(set(options) - allowed):
    raise ValueError(f'Unknown option(s) {unknown} for {kind!r} in {spec!r}; '
                     f'accepted: {sorted(allowed)}.')
  return kind, os.path.expanduser(path), options


def _number(options, key, cast, default, spec):
  try:
    return cast(options[key]) if key in options else default
  except ValueError:
    raise ValueError(f'Option {key}={options[key]!r} in {spec!r} is not a valid '
                     f'{cast.__name__}.') from None


def _size(options, default: int, spec: str) -> int | tuple[int, int]:
  """`size=S` (square) or `size=WxH` -> S or (H, W)."""
  if 'size' not in options:
    return default
  text = options['size'].lower()
  try:
    if 'x' in text:
      w, h = (int(v) for v in text.split('x'))
      return (h, w)
    return int(text)
  except ValueError:
    raise ValueError(f'Option size={options["size"]!r} in {spec!r} is not S or WxH '
                     '(e.g. 256 or 384x256).') from None


def open_source(spec: str, split: str = 'test', *, synthetic_size: int = 256,
                synthetic_count: int = 100) -> Source:
  """Opens a data spec (see `SPEC_HELP`) as a `Source` of full-resolution samples.

  Args:
    spec: e.g. 'npy:/data/ReLoBlur_npy', 'reloblur:/data/ReLoBlur?split=train',
      'gopro:/data/GoPro?blur=blur_gamma', 'pairs:/my/pairs', 'synthetic',
      'synthetic?count=20&size=512', 'tfds:reloblur?data_dir=/tfds'.
    split: 'train' or 'test' unless the spec sets `split=`; ignored by npy/pairs.
      `synthetic` with split 'test' uses held-out photos and random streams.
    synthetic_size: default side of synthetic images (training passes its patch
      size); `size=` in the spec wins.
    synthetic_count: default number of synthetic images; `count=` wins.

  Returns:
    A `Source`: `len(src)`, `src[i]` -> {'blur', 'sharp': float32 [H, W, 3],
    'mask': float32 [H, W, 1], 'name': str}; `src.example(i)` -> uint8 form.

  Raises:
    ValueError: malformed spec (unknown kind or option, missing path).
    FileNotFoundError: a folder that should exist does not.
    DataError: files do not pair up or cannot be read.
  """
  kind, path, options = parse_spec(spec)
  split = options.get('split', split)
  if kind in ('reloblur', 'gopro', 'synthetic') and split not in ('train', 'test'):
    raise ValueError(f'split must be train or test, got {split!r} in {spec!r}.')
  threshold = _number(options, 'threshold', float, DEFAULT_MASK_THRESHOLD, spec)
  if kind == 'npy':
    return NpySource(path, threshold)
  if kind == 'reloblur':
    return ReLoBlurSource(path, split, threshold)
  if kind == 'gopro':
    return GoProSource(path, split, options.get('blur', 'blur'))
  if kind == 'pairs':
    return PairsSource(path, threshold)
  if kind == 'tfds':
    return TfdsSource(path, split, options.get('data_dir'))
  from lmdvit_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  preset = options.get('preset', 'realistic')
  if preset not in synthetic.PRESETS:
    raise ValueError(f'Unknown preset {preset!r} in {spec!r}; accepted: '
                     f'{sorted(synthetic.PRESETS)}.')
  default = synthetic.PRESETS[preset]
  blur = (_number(options, 'min_blur', float, default.blur_length[0], spec),
          _number(options, 'max_blur', float, default.blur_length[1], spec))
  if not 0 < blur[0] <= blur[1]:
    raise ValueError(f'Need 0 < min_blur <= max_blur, got {blur[0]} and {blur[1]} in {spec!r}.')
  return synthetic.SyntheticSource(
      count=_number(options, 'count', int, synthetic_count, spec),
      size=_size(options, synthetic_size, spec),
      seed=_number(options, 'seed', int, 0, spec),
      split=split, photos=options.get('photos'),
      settings=dataclasses.replace(default, blur_length=blur))
