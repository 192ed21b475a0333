"""Choosing the inference keep threshold on validation data."""

from __future__ import annotations

from pathlib import Path

from lmdvit_jax import checkpointing, evaluation
from lmdvit_jax.data import open_source
from lmdvit_jax.inference import Deblurrer, model_from_kwargs
from lmdvit_jax.inference_settings import InferenceSettings


def calibrate_keep_threshold(
  checkpoint: str | Path,
  data: str,
  recall: float,
  candidates=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
  self_ensemble: int = 1,
) -> tuple[float, list[dict[str, float]]]:
  """Chooses the inference keep threshold on validation data.

  The class-balanced pruning loss shifts the predictors' probabilities, so 0.5
  is not the threshold that keeps the blurred windows at the best precision.
  This picks the highest candidate whose pruning recall on `data` (split
  'val': photos in neither the training nor the held-out split) is at least
  `recall` (the best precision that still keeps the blurred windows), or the
  candidate with the highest recall if none reaches it. Scored as the demo
  then runs: with `self_ensemble` passes per image.

  Returns:
    The threshold and one row per candidate (recall, precision, kept fraction,
    weighted and whole-image PSNR gain, PSNR outside the mask).
  """
  source = open_source(data, split='val')
  kwargs, params = checkpointing.load_model(checkpoint)
  rows = []
  for t in candidates:
    settings = InferenceSettings(
      capacity='masked', keep_threshold=float(t), self_ensemble=self_ensemble
    )
    deblurrer = Deblurrer(model_from_kwargs(kwargs), params, settings, warmup=False)
    m = evaluation.run(deblurrer, source)['mean']
    rows.append(
      dict(
        keep_threshold=float(t),
        recall=m['prune_recall'],
        precision=m['prune_precision'],
        kept_fraction=m['kept_fraction'],
        wpsnr_gain=m['wpsnr'] - m['input_wpsnr'],
        psnr_gain=m['psnr'] - m['input_psnr'],
        sharp_psnr=m['sharp_psnr'],
      )
    )
  return choose_keep_threshold(rows, recall), rows


def choose_keep_threshold(rows: list[dict[str, float]], recall: float) -> float:
  """The highest `keep_threshold` of `rows` whose recall is at least `recall`,
  else the one with the highest recall."""
  good = [r for r in rows if r['recall'] >= recall]
  best = (
    max(good, key=lambda r: r['keep_threshold']) if good else max(rows, key=lambda r: r['recall'])
  )
  return best['keep_threshold']
