"""Data specs: one string names any data the project reads.

    kind:PATH?key=value&key=value      e.g. reloblur:/data/ReLoBlur?split=test

`open_source(spec)` opens it as a `Source` (see `SPEC_HELP` for the kinds);
`parse_spec` only validates it (training checks every spec before it starts).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
import urllib.parse

from lmdvit_jax.data import cache, outside, photos, readers, synthetic, tfds_builders
from lmdvit_jax.data.examples import Source
from lmdvit_jax.data.readers import DEFAULT_MASK_THRESHOLD

_KINDS = {
  # kind: (needs a path, accepted options)
  'npy': (True, {'threshold'}),
  'reloblur': (True, {'split', 'threshold', 'cache'}),
  'gopro': (True, {'split', 'blur', 'cache'}),
  'pairs': (True, {'threshold', 'cache'}),
  'synthetic': (
    False,
    {'split', 'count', 'size', 'seed', 'photos', 'min_blur', 'max_blur', 'preset'},
  ),
  'tfds': (True, {'split', 'data_dir'}),
  'outside': (False, {'split', 'count', 'size', 'seed', 'photos'}),
}

SPEC_HELP = """Data specs:
  npy:FOLDER                 folder of LMD-ViT evaluation .npy files
  reloblur:DIR[?split=test]  DIR holds dataset/ and masks/ (LBAG layout)
  gopro:DIR[?split=test&blur=blur_gamma]   GOPRO_Large/ (or train/, test/) inside DIR
  pairs:DIR                  DIR/blur/, DIR/sharp/, optional DIR/mask/
  synthetic[?count=100&size=256&seed=0&photos=skimage&min_blur=2&max_blur=12&preset=realistic]
                             generated local blur (motion path lengths in pixels;
                             size=S or WxH, e.g. 384x256; preset=extreme: 8-64 px;
                             preset=varied: any outline, exposure, path or shake,
                             random camera gamma, noise and JPEG;
                             photos: skimage, packages (more photos), deadleaves
                             (procedural), a FOLDER, or several joined by ',';
                             split=val: photos in neither train nor test)
  tfds:NAME[?split=test&data_dir=DIR]   a built TFDS dataset (reloblur, gopro, ...)
  outside[?count=12&size=384x256&seed=0&photos=FOLDER]
                             a held-out local-blur set sharing nothing with
                             `synthetic`: other photos, shapes, motion, noise, JPEG
Options: threshold=0.5 binarises masks (fraction of full scale); cache=DIR
(reloblur, gopro, pairs) reads frames decoded once into DIR: fast crops for
long training runs (fill it ahead with python -m lmdvit_jax.data.build SPEC)."""


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
    raise ValueError(
      f'{kind!r} needs a path, as in {kind}:/path/to/data (got {spec!r}).\n{SPEC_HELP}'
    )
  if not needs_path and sep:
    raise ValueError(
      f'{kind!r} takes no path (got {spec!r}); use options, as in '
      f'synthetic?photos=/my/photos.\n{SPEC_HELP}'
    )
  try:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
  except ValueError as e:
    raise ValueError(f'Malformed options {query!r} in {spec!r}: write key=value&key=value.') from e
  options = dict(pairs)
  if unknown := sorted(set(options) - allowed):
    raise ValueError(
      f'Unknown option(s) {unknown} for {kind!r} in {spec!r}; accepted: {sorted(allowed)}.'
    )
  return kind, os.path.expanduser(path), options


def _number(options, key, cast, default, spec):
  try:
    return cast(options[key]) if key in options else default
  except ValueError:
    raise ValueError(
      f'Option {key}={options[key]!r} in {spec!r} is not a valid {cast.__name__}.'
    ) from None


def _size(options, default: int | tuple[int, int], spec: str) -> int | tuple[int, int]:
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
    raise ValueError(
      f'Option size={options["size"]!r} in {spec!r} is not S or WxH (e.g. 256 or 384x256).'
    ) from None


def _file_source(
  spec: str,
  kind: str,
  path: str,
  split: str,
  threshold: float,
  options: dict[str, str],
  verify_cache: bool,
) -> Source:
  """A reader of a folder layout, through its frame cache when `cache=DIR` is set."""
  source: readers.FileTriplesSource
  if kind == 'reloblur':
    source = readers.ReLoBlurSource(path, split, threshold)
  elif kind == 'gopro':
    blur = options.get('blur', 'blur')
    source = readers.GoProSource(path, split, blur)
  else:
    source = readers.PairsSource(path, threshold)
  if 'cache' not in options:
    return source
  if not options['cache']:
    raise ValueError(f'cache= needs a folder, as in cache=/fast/cache (got {spec!r}).')
  # What the frames depend on: the files (root, split, kind of blur) and the mask threshold.
  identity = f'{kind}:{Path(path).resolve()}?split={split}&threshold={threshold!r}'
  label = kind if kind == 'pairs' else f'{kind}-{split}'
  if kind == 'gopro':
    identity, label = identity + f'&blur={blur}', f'{label}-{blur}'
  # The spec as the build command takes it: the split spelled out.
  build_spec = (
    spec
    if 'split' in options or kind == 'pairs' or split == 'train'
    else (f'{spec}{"&" if "?" in spec else "?"}split={split}')
  )
  return cache.CachedSource(
    source, options['cache'], label, identity, build_spec, verify=verify_cache
  )


def open_source(
  spec: str,
  split: str = 'test',
  *,
  synthetic_size: int = 256,
  synthetic_count: int = 100,
  verify_cache: bool = True,
) -> Source:
  """Opens a data spec (see `SPEC_HELP`) as a `Source` of full-resolution samples.

  Args:
    spec: e.g. 'npy:/data/ReLoBlur_npy', 'reloblur:/data/ReLoBlur?split=train',
      'gopro:/data/GoPro?blur=blur_gamma', 'pairs:/my/pairs', 'synthetic',
      'synthetic?count=20&size=512', 'tfds:reloblur?data_dir=/tfds'.
    split: 'train' or 'test' unless the spec sets `split=`; ignored by npy/pairs.
      `synthetic` with split 'test' uses held-out photos and random streams;
      `synthetic` also has 'val', photos in neither of the other two.
    synthetic_size: default side of synthetic images (training passes its patch
      size); `size=` in the spec wins.
    synthetic_count: default number of synthetic images; `count=` wins.
    verify_cache: with `cache=DIR`, refuse frames whose source files changed
      (the build command decodes them again instead).

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
  if kind in ('reloblur', 'gopro') and split not in ('train', 'test'):
    raise ValueError(f'split must be train or test, got {split!r} in {spec!r}.')
  if kind == 'synthetic' and split not in photos.SPLITS:
    raise ValueError(f'split must be one of {photos.SPLITS}, got {split!r} in {spec!r}.')
  threshold = _number(options, 'threshold', float, DEFAULT_MASK_THRESHOLD, spec)
  if kind == 'npy':
    return readers.NpySource(path, threshold)
  if kind in ('reloblur', 'gopro', 'pairs'):
    return _file_source(spec, kind, path, split, threshold, options, verify_cache)
  if kind == 'tfds':
    return tfds_builders.TfdsSource(path, split, options.get('data_dir'))
  if kind == 'outside':  # always held out: `split` is accepted and ignored
    return outside.OutsideSource(
      _number(options, 'count', int, 12, spec),
      _size(options, (256, 384), spec),
      _number(options, 'seed', int, 0, spec),
      options.get('photos'),
    )
  preset = options.get('preset', 'realistic')
  if preset not in synthetic.PRESETS:
    raise ValueError(
      f'Unknown preset {preset!r} in {spec!r}; accepted: {sorted(synthetic.PRESETS)}.'
    )
  default = synthetic.PRESETS[preset]
  blur = (
    _number(options, 'min_blur', float, default.blur_length[0], spec),
    _number(options, 'max_blur', float, default.blur_length[1], spec),
  )
  if not 0 < blur[0] <= blur[1]:
    raise ValueError(f'Need 0 < min_blur <= max_blur, got {blur[0]} and {blur[1]} in {spec!r}.')
  return synthetic.SyntheticSource(
    count=_number(options, 'count', int, synthetic_count, spec),
    size=_size(options, synthetic_size, spec),
    seed=_number(options, 'seed', int, 0, spec),
    split=split,
    photos=options.get('photos'),
    settings=dataclasses.replace(default, blur_length=blur),
  )
