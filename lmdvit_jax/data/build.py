"""Builds data in a prepared form: the TFDS datasets of this package as
array_record (no TensorFlow), or the frame cache of a data spec with `cache=DIR`.

    python -m lmdvit_jax.data.build reloblur --manual_dir=/data/ReLoBlur
    python -m lmdvit_jax.data.build gopro --manual_dir=/data/GoPro   # or gopro/blur_gamma
    python -m lmdvit_jax.data.build synthetic_local_blur             # or .../128, .../tiny
    python -m lmdvit_jax.data.build 'reloblur:/data/ReLoBlur?cache=/fast/cache'  # split=train

TFDS datasets go to --data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
A frame cache (`lmdvit_jax.data.cache`) is filled with the frames not yet
decoded, or changed since; the space it takes is printed before any work.
"""

from __future__ import annotations

import logging

from absl import app, flags

from lmdvit_jax import cli

BUILDER_NAMES = ('reloblur', 'gopro', 'synthetic_local_blur')
_USAGE = (
  'usage: python -m lmdvit_jax.data.build NAME [--manual_dir=DIR] [--data_dir=DIR], '
  f'NAME one of {", ".join(BUILDER_NAMES)} (with /CONFIG); or python -m '
  "lmdvit_jax.data.build 'KIND:PATH?cache=DIR' [--jobs=N] (reloblur, gopro, pairs)"
)


def _define_flags() -> None:
  flags.DEFINE_string('manual_dir', None, 'Folder with the downloaded files (reloblur, gopro).')
  flags.DEFINE_string(
    'data_dir', None, 'Where TFDS datasets live (default $TFDS_DATA_DIR or ~/tensorflow_datasets).'
  )
  flags.DEFINE_bool('overwrite', False, 'Rebuild an existing dataset or frame cache from scratch.')
  flags.DEFINE_integer('jobs', None, 'Frames decoded at once (default: one per core).')


def build_cache(spec: str, overwrite: bool = False, jobs: int | None = None) -> dict:
  """Fills the frame cache of `spec` (a data spec with `cache=DIR`; split train unless it says)."""
  from lmdvit_jax.data import cache, specs

  kind, _, options = specs.parse_spec(spec)
  if 'cache' not in options:
    raise ValueError(f'{spec!r} has no cache=DIR option: write {kind}:PATH?cache=DIR')
  source = specs.open_source(spec, split='train', verify_cache=False)
  assert isinstance(source, cache.CachedSource)  # A spec with cache=DIR opens as one.
  result = cache.build(source, overwrite=overwrite, jobs=jobs)
  print(
    f'{source.folder}: {result["frames"]} frames, {result["bytes"] / 1e9:.2f} GB; '
    f'decoded {result["decoded"]} in {result["seconds"]:.1f} s'
  )
  return result


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError(_USAGE)
  name, fl = argv[1], flags.FLAGS
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  if ':' in name or '?' in name:
    build_cache(name, fl.overwrite, fl.jobs)
    return
  if name.split('/')[0] not in BUILDER_NAMES:
    raise ValueError(f'unknown dataset {name!r}; {_USAGE}')
  from lmdvit_jax.data import tfds_builders

  builder = tfds_builders.build(name, fl.data_dir, fl.manual_dir, fl.overwrite)
  for split, info in builder.info.splits.items():
    print(f'{name} {split}: {info.num_examples} examples in {builder.data_dir}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
