"""Builds the TFDS datasets of this package as array_record (no TensorFlow).

    python -m lmdvit_jax.data.build reloblur --manual_dir=/data/ReLoBlur
    python -m lmdvit_jax.data.build gopro --manual_dir=/data/GoPro   # or gopro/blur_gamma
    python -m lmdvit_jax.data.build synthetic_local_blur             # or .../128, .../tiny

Datasets go to --data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
"""

from __future__ import annotations

import logging

from absl import app, flags

from lmdvit_jax import cli

BUILDER_NAMES = ('reloblur', 'gopro', 'synthetic_local_blur')


def _define_flags() -> None:
  flags.DEFINE_string('manual_dir', None, 'Folder with the downloaded files (reloblur, gopro).')
  flags.DEFINE_string('data_dir', None, 'Where TFDS datasets live (default $TFDS_DATA_DIR or '
                      '~/tensorflow_datasets).')
  flags.DEFINE_bool('overwrite', False, 'Rebuild an existing dataset.')


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError('usage: python -m lmdvit_jax.data.build NAME [--manual_dir=DIR] '
                         f'[--data_dir=DIR]; NAME: {", ".join(BUILDER_NAMES)} (with /CONFIG)')
  name, fl = argv[1], flags.FLAGS
  if name.split('/')[0] not in BUILDER_NAMES:
    raise ValueError(f'unknown dataset {name!r}; choose from {", ".join(BUILDER_NAMES)}')
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  from lmdvit_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  builder = tfds_builders.build(name, fl.data_dir, fl.manual_dir, fl.overwrite)
  for split, info in builder.info.splits.items():
    print(f'{name} {split}: {info.num_examples} examples in {builder.data_dir}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
