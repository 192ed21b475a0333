"""LMD-ViT as released (Li et al., ICLR 2024): embed_dim 32, 54,549,163 params.

Evaluate the released weights on ReLoBlur (paper Table 1: PSNR 35.43, SSIM 0.9288,
weighted PSNR 30.29, weighted SSIM 0.8934):

  python -m lmdvit_jax.convert model_LMDVIT.pth ckpt/lmdvit
  python evaluate.py --checkpoint ckpt/lmdvit --data npy:ReLoBlur_test_npy --output out/
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """Keyword arguments of `lmdvit_jax.models.LMDViT` for the released model."""
  return ml_collections.ConfigDict(dict(
      embed_dim=32,
      depths=(1, 2, 8, 8, 2, 8, 8, 2, 1),
      num_heads=(1, 2, 4, 8, 16, 16, 8, 4, 2),
      win_size=8,
      mlp_ratio=4.0,
      modulator=True,
      prune_loc=(1, 1, 1, 1, 1, 1, 1, 1, 1),
      keep_threshold=0.5,
      drop_path_rate=0.1,
  ))


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = get_model_config()
  return config
