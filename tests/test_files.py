"""Atomic writes: a failed write leaves the old file and no temporary behind."""

import json
import os

import pytest

from lmdvit_jax import files


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
  target = tmp_path / 'x.png'
  target.write_bytes(b'old')

  def fail(*args):
    raise OSError('disk full')

  monkeypatch.setattr(os, 'replace', fail)
  with pytest.raises(OSError):
    files.write_bytes_atomic(target, b'new contents')
  assert target.read_bytes() == b'old' and sorted(os.listdir(tmp_path)) == ['x.png']


def test_json_is_written_whole_with_the_usual_mode(tmp_path):
  path = tmp_path / 'sub' / 'a.json'
  files.write_json_atomic(path, {'b': 1, 'a': [1.5]})
  assert json.loads(path.read_text()) == {'a': [1.5], 'b': 1}
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask
