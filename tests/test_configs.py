"""Every shipped config validates and its data sources open."""

import importlib
from pathlib import Path

import pytest

from lmdvit_jax import config_checks
from lmdvit_jax.data.specs import open_source

CONFIGS = sorted(
  p.stem
  for p in (Path(__file__).resolve().parents[1] / 'configs').glob('*.py')
  if p.stem != '__init__'
)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_validates_and_its_sources_make_examples(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  config_checks.check_run_config(config)
  for spec in config.data.sources:
    if spec.split(':')[0].split('?')[0] in ('synthetic', 'outside'):  # others need a dataset
      example = open_source(spec, split='train')[0]
      assert example['blur'].shape == example['sharp'].shape
