r"""The demo: a small LMD-ViT removes synthetic local motion blur from held-out photos.

    python demo.py                          # shipped demo weights: evaluate, report, picture
    python demo.py --train                  # retrain them from scratch first (configs/demo.py)
    python demo.py --workdir=/tmp/d --train --config.num_train_steps=100
    python demo.py --workdir=W --train --export_weights   # how the shipped weights were made

Leaves in WORKDIR (default workdirs/demo) a checkpoint directory that
`evaluate.py --checkpoint WORKDIR` and `python -m lmdvit_jax.deblur --checkpoint
WORKDIR` accept, and WORKDIR/demo_eval/ with metrics.json, summary.json,
overview.png and panels/. See `lmdvit_jax/demo.py`.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from lmdvit_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  str(Path(__file__).resolve().parent / 'configs' / 'demo.py'),
  'Demo configuration file.',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/demo', 'Directory for the model and results.')
_TRAIN = flags.DEFINE_bool(
  'train', False, 'Train the model from scratch instead of installing the shipped demo weights.'
)
_EXPORT = flags.DEFINE_bool(
  'export_weights',
  False,
  "Write the workdir's model over the shipped "
  'demo weights (lmdvit_jax/demo_weights/), with its training log.',
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from lmdvit_jax import compilation_cache, demo

  compilation_cache.enable()
  demo.run(
    _CONFIG.value,
    Path(_WORKDIR.value),
    train=_TRAIN.value,
    export=_EXPORT.value,
    overrides=config_flags.get_override_values(flags.FLAGS["config"]),
  )


if __name__ == '__main__':
  cli.run(main, quiet=True, huge_pages=False)  # small programs, a few calls
