"""Shared test helpers: where the golden fixtures live."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
  """`$LMDVIT_REFERENCE_DIR`, else `../shared/reference` beside the clone, else `tests/reference`."""
  env = os.environ.get('LMDVIT_REFERENCE_DIR')
  for cand in ([Path(env)] if env else []) + [REPO.parent / 'shared' / 'reference',
                                              REPO / 'tests' / 'reference']:
    if cand.is_dir() and any(cand.glob('fixture_*_meta.json')):
      return cand
  raise FileNotFoundError('no reference fixtures found (set LMDVIT_REFERENCE_DIR)')


def fixture_names() -> list[str]:
  try:
    return sorted(p.name[:-len('_meta.json')] for p in reference_dir().glob('fixture_*_meta.json'))
  except FileNotFoundError:
    return []


@pytest.fixture(scope='session')
def reference() -> Path:
  return reference_dir()


@pytest.fixture(scope='session')
def checkpoint(tmp_path_factory) -> Path:
  """A checkpoint directory of the tiny model (masked mode), random params."""
  from lmdvit_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from lmdvit_jax.models import LMDViT, init_params  # pylint: disable=g-import-not-at-top
  from tests.helpers import TINY  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('ckpt')
  checkpointing.save_model(path, init_params(LMDViT(**TINY), 0), TINY)
  return path


# Tests stay hermetic: no persistent compilation cache unless a test sets one.
os.environ.setdefault('LMDVIT_COMPILATION_CACHE', 'off')
