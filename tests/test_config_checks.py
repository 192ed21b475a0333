"""Configs no run can mean are refused before any work, naming the field."""

import re

import pytest

from lmdvit_jax import config_checks
from tests.helpers import small_config


@pytest.mark.parametrize(
  'key,value,message',
  [
    ('optim.lr', -1.0, 'optim.lr must be positive, got -1.0'),
    ('optim.lr', float('nan'), 'optim.lr must be positive'),
    ('optim.b2', 1.0, 'optim.b2 must be in [0, 1)'),
    ('optim.eps', 0.0, 'optim.eps must be positive'),
    ('optim.weight_decay', -0.1, 'optim.weight_decay must be at least 0'),
    ('optim.warmup_steps', -5, 'optim.warmup_steps must be at least 0'),
    ('loss.ssim', -1.0, 'loss.ssim must be at least 0 (a loss weight)'),
    ('data.blur_prob', 1.5, 'data.blur_prob must be in [0, 1]'),
    ('data.weights', (1.0, -1.0), 'data.weights must be at least 0'),
  ],
)
def test_settings_no_run_can_mean_are_refused_before_any_work(key, value, message):
  config = small_config()
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    config_checks.check_run_config(config)
