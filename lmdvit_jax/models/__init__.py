"""LMD-ViT modules (flax.linen)."""

from lmdvit_jax.models.lmdvit import (
  LMDViT,
  LMDViTOutput,
  count_params,
  fan_in_predictors,
  identity_output,
  init_params,
)

__all__ = [
  "LMDViT",
  "LMDViTOutput",
  "count_params",
  "fan_in_predictors",
  "identity_output",
  "init_params",
]
