"""Refusing training configs no run can mean, before any work: a misspelled or
out-of-range field is one line naming it (`train.py` and the benchmarks call
`check_run_config` first)."""

from __future__ import annotations

import math

import jax

from lmdvit_jax import losses
from lmdvit_jax.models import LMDViT
from lmdvit_jax.models.lmdvit import MATMUL_PRECISIONS
from lmdvit_jax.train_lib import TRAINABLE, build_model


def check_run_config(config) -> LMDViT:
  """Validates a training config before any work is done; returns its model.

  Raises:
    ValueError: naming the field (model attributes, compute dtype, remat,
      patch size, batch size, step counts, data specs).
  """
  # Imported here: the data readers pull in image and TFDS helpers.
  from lmdvit_jax.data import specs

  model = build_model(config)
  if config.patch_size % model.multiple:
    raise ValueError(
      f'patch_size={config.patch_size} is not a multiple of 16 * win_size = '
      f'{model.multiple}: set --config.patch_size to e.g. '
      f'{max(1, round(config.patch_size / model.multiple)) * model.multiple}'
    )
  for name in (
    'num_train_steps',
    'batch_size',
    'log_every_steps',
    'checkpoint_every_steps',
    'keep_checkpoints',
  ):
    if int(config[name]) < 1:
      raise ValueError(f'{name} must be at least 1, got {config[name]}')
  _check_ranges(config)
  known = losses.BUILTIN_TERMS + losses.SETTINGS + tuple(losses.EXTRA_TERMS)
  if unknown := sorted(set(config.loss) - set(known)):
    raise ValueError(
      f'config.loss.{unknown[0]} is not a loss term or setting (terms: '
      f'{", ".join(losses.BUILTIN_TERMS + tuple(losses.EXTRA_TERMS))}; register '
      'a new one in losses.EXTRA_TERMS)'
    )
  if config.get('matmul_precision', 'default') not in MATMUL_PRECISIONS:
    raise ValueError(
      f'matmul_precision must be one of {MATMUL_PRECISIONS}, got {config.matmul_precision!r}'
    )
  if config.optim.get('trainable', 'all') not in TRAINABLE:
    raise ValueError(f'optim.trainable must be one of {TRAINABLE}, got {config.optim.trainable!r}')
  if config.batch_size % jax.device_count():
    raise ValueError(
      f'batch_size={config.batch_size} is not divisible by the {jax.device_count()} devices'
    )
  for spec in config.data.sources:
    specs.parse_spec(spec)
  if config.eval_every_steps > 0 and config.eval.source:
    specs.parse_spec(config.eval.source)
  return model


# Settings no run can mean, as (path, test, what it must be).
_RANGES = (
  ('optim.lr', lambda v: v > 0, 'positive'),
  ('optim.end_lr', lambda v: v >= 0, 'at least 0'),
  ('optim.warmup_steps', lambda v: v >= 0, 'at least 0'),
  ('optim.restart_every', lambda v: v >= 0, 'at least 0 (0: one cosine)'),
  ('optim.b1', lambda v: 0 <= v < 1, 'in [0, 1)'),
  ('optim.b2', lambda v: 0 <= v < 1, 'in [0, 1)'),
  ('optim.eps', lambda v: v > 0, 'positive'),
  ('optim.weight_decay', lambda v: v >= 0, 'at least 0'),
  ('optim.grad_clip', lambda v: v >= 0, 'at least 0 (0: off)'),
  ('optim.predictor_lr_scale', lambda v: v >= 0, 'at least 0'),
  ('eval_every_steps', lambda v: v >= 0, 'at least 0 (0: never)'),
  ('eval.max_images', lambda v: v >= 0, 'at least 0'),
  ('data.blur_prob', lambda v: 0 <= v <= 1, 'in [0, 1]'),
  ('data.num_threads', lambda v: v >= 1, 'at least 1'),
  ('data.worker_count', lambda v: v >= 0, 'at least 0'),
  ('loss.sharp_margin', lambda v: v >= 0, 'at least 0'),
)


def _check_ranges(config) -> None:
  """Numbers no run can mean (a negative learning rate, a beta of 1, a negative
  loss weight...) are refused before any work, naming the field."""
  checks = list(_RANGES)
  for term in losses.BUILTIN_TERMS + tuple(losses.EXTRA_TERMS):
    checks.append((f'loss.{term}', lambda v: v >= 0, 'at least 0 (a loss weight)'))
  for path, ok, what in checks:
    node, found = config, True
    for key in path.split('.'):
      if key not in node:
        found = False
        break
      node = node[key]
    if not found or isinstance(node, bool):
      continue
    try:
      value = float(node)
    except (TypeError, ValueError):
      raise ValueError(f'{path} must be a number, got {node!r}') from None
    if not (math.isfinite(value) and ok(value)):
      raise ValueError(f'{path} must be {what}, got {node!r}')
  weights = config.data.get('weights', None)
  if weights is not None and (any(float(w) < 0 for w in weights) or not sum(weights) > 0):
    raise ValueError(f'data.weights must be at least 0 with a positive sum, got {tuple(weights)}')
