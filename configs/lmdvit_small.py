"""LMD-ViT-Small (paper supplementary Table B.3): the released model at embed_dim 16.

That is 13,945,471 params here. The paper lists 21.59 M for its Small model but gives
no other hyper-parameter; halving the width of the released configuration (params
grow with the square of the width) gives the count above.

The paper reports 34.98 PSNR / 0.9259 SSIM / 29.89 weighted PSNR on ReLoBlur.
Training fields are those of `configs/lmdvit.py` (the paper's recipe).
"""

import ml_collections

from configs import lmdvit


def get_config() -> ml_collections.ConfigDict:
  config = lmdvit.get_config()
  config.model.embed_dim = 16
  return config
