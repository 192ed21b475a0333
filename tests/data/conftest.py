"""Fixtures of the data tests: small data sets on disk."""

import pytest

from .builders import build_npy, build_reloblur


@pytest.fixture
def reloblur_tree(tmp_path):
  root = tmp_path / 'ReLoBlur'
  return root, build_reloblur(root)


@pytest.fixture
def npy_folder(tmp_path):
  root = tmp_path / 'npy'
  return root, build_npy(root)
