"""Builds the TFDS datasets of this package as array_record (no TensorFlow).

    python -m lmdvit_jax.data.build reloblur --manual_dir=/data/ReLoBlur
    python -m lmdvit_jax.data.build gopro --manual_dir=/data/GoPro   # or gopro/blur_gamma
    python -m lmdvit_jax.data.build synthetic_local_blur             # or .../128, .../tiny

Datasets go to --data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
"""

from __future__ import annotations

import argparse
import logging
import sys

BUILDER_NAMES = ('reloblur', 'gopro', 'synthetic_local_blur')


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m lmdvit_jax.data.build',
      description='Build a dataset as array_record files (no TensorFlow needed).')
  parser.add_argument('name', help='reloblur, gopro[/blur_gamma] or '
                      'synthetic_local_blur[/256|/128|/tiny]')
  parser.add_argument('--manual_dir', help='folder with the downloaded files (reloblur, gopro)')
  parser.add_argument('--data_dir', help='where TFDS datasets live (default $TFDS_DATA_DIR '
                      'or ~/tensorflow_datasets)')
  parser.add_argument('--overwrite', action='store_true', help='rebuild an existing dataset')
  args = parser.parse_args(argv)
  if args.name.split('/')[0] not in BUILDER_NAMES:
    parser.error(f'unknown dataset {args.name!r}; choose from {", ".join(BUILDER_NAMES)}')
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  from lmdvit_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds_builders.build(args.name, args.data_dir, args.manual_dir, args.overwrite)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  for split, info in builder.info.splits.items():
    print(f'{args.name} {split}: {info.num_examples} examples in {builder.data_dir}')


if __name__ == '__main__':
  main(sys.argv[1:])
