"""A tiny LMD-ViT for tests and smoke runs (embed_dim 8; every kind of block).

Stage depths include 1 (one predictor), 2 (unshifted and shifted predictors) and
3 (an AdaWPT-P block reusing its parity's decision).
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
  return config
