r"""Trains LMD-ViT: one CPU, one GPU or a multi-host GPU/TPU pod.

  python train.py --config=configs/tiny.py --workdir=/tmp/lmdvit_tiny
  python train.py --config=configs/lmdvit.py --workdir=runs/lmdvit \
      --config.data.sources="('gopro:/data/GoPro', 'reloblur:/data/ReLoBlur')" \
      --config.optim.lr=2e-4

Run it again with the same workdir and it resumes from the newest checkpoint
exactly (params, optimizer, step, rng and data position). The workdir layout is
described in `lmdvit_jax/training.py`.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from lmdvit_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Training configuration file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  'allow_config_change',
  False,
  'Resume a run with settings that change what it computes '
  '(batch size, learning rate, data, ...); the earlier config is kept as config.STEP.json.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported here so that `--help` and config errors come back fast.
  from lmdvit_jax import compilation_cache, training

  compilation_cache.enable()
  training.train_and_evaluate(_CONFIG.value, Path(_WORKDIR.value), _ALLOW_CONFIG_CHANGE.value)


if __name__ == '__main__':
  cli.run(main)
