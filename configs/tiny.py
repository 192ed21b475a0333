"""A tiny LMD-ViT for tests and smoke runs (embed_dim 8; every kind of block).

Stage depths include 1 (one predictor), 2 (unshifted and shifted predictors) and
3 (an AdaWPT-P block reusing its parity's decision).

Training runs on one CPU with synthetic data (no download), checkpoints every
10 steps and evaluates on 2 held-out synthetic images:

  python train.py --config=configs/tiny.py --workdir=/tmp/lmdvit_tiny
"""

import ml_collections

from configs import lmdvit


def get_config() -> ml_collections.ConfigDict:
  config = lmdvit.get_config()
  config.model.update(
    embed_dim=8,
    depths=(1, 2, 1, 1, 1, 1, 1, 3, 1),
    num_heads=(1, 2, 2, 4, 4, 4, 4, 2, 2),
    drop_path_rate=0.1,
  )
  config.update(
    num_train_steps=20,
    batch_size=2,
    patch_size=128,
    log_every_steps=5,
    checkpoint_every_steps=10,
    keep_checkpoints=2,
    eval_every_steps=10,
  )
  config.optim.update(lr=1e-3, warmup_steps=2, restart_every=0, end_lr=1e-5, grad_clip=1.0)
  config.data.update(sources=('synthetic',), weights=None, num_threads=2)
  config.eval.update(source='synthetic?size=128&count=2', max_images=2)
  return config
