"""Fixtures shared by the tests (helpers live in tests/helpers.py)."""

import os
from pathlib import Path
import signal

import pytest

from tests import helpers


@pytest.fixture(scope='session')
def reference() -> Path:
  return helpers.reference_dir()


@pytest.fixture(scope='session')
def checkpoint(tmp_path_factory) -> Path:
  """A checkpoint directory of the tiny model (masked mode), random params."""
  from lmdvit_jax import checkpointing
  from lmdvit_jax.models import LMDViT, init_params
  from tests.helpers import TINY

  path = tmp_path_factory.mktemp('ckpt')
  checkpointing.save_model(path, init_params(LMDViT(**TINY), 0), TINY)
  return path


def pytest_collection_modifyitems(items):
  """The modules marked `schedule_first` first: each is one worker's longest
  stretch of work, so it starts while the other worker takes the rest."""
  items.sort(key=lambda item: item.get_closest_marker('schedule_first') is None)


# Tests stay hermetic: no persistent compilation cache unless a test sets one.
os.environ.setdefault('LMDVIT_COMPILATION_CACHE', 'off')

# A test run started with SIGINT ignored (a script's background job: `cmd &`
# without job control, as CI may start it) passes that on to every command it
# starts, and the Ctrl-C tests would find it ignored: take it as a terminal's
# foreground job does.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)
