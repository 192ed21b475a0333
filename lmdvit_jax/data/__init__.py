"""Data: synthetic local blur, dataset readers, TFDS builders, training pipeline.

Importing this package registers the TFDS builders `reloblur`, `gopro` and
`synthetic_local_blur`. TensorFlow Datasets itself takes ~0.35 s to import and
most users of this package (evaluation on folders, synthetic data) never need
it, so registration runs when `tensorflow_datasets` is imported: at once if it
already was, otherwise right after its first import, whoever imports it.

Modules: `readers` (open_source and one reader per layout), `synthetic`,
`crops`, `pipeline` (grain + jax; import it explicitly), `tfds_builders`,
`build` (command line).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_TFDS = 'tensorflow_datasets'
_BUILDERS = 'lmdvit_jax.data.tfds_builders'


def _register_builders() -> None:
  importlib.import_module(_BUILDERS)


class _RegisterAfterTfdsImport(importlib.abc.MetaPathFinder):
  """Wraps the loader of `tensorflow_datasets` to import our builders after it."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname != _TFDS:
      return None
    sys.meta_path.remove(self)  # One shot; also keeps find_spec below from recursing.
    spec = importlib.util.find_spec(fullname)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_then_register(module):
      exec_module(module)
      _register_builders()

    spec.loader.exec_module = exec_then_register
    return spec


def _install() -> None:
  if _TFDS in sys.modules:
    _register_builders()
  elif not any(isinstance(f, _RegisterAfterTfdsImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTfdsImport())


_install()

from lmdvit_jax.data.examples import DataError  # pylint: disable=g-import-not-at-top,wrong-import-position
from lmdvit_jax.data.readers import open_source  # pylint: disable=g-import-not-at-top,wrong-import-position

__all__ = ['DataError', 'open_source']
