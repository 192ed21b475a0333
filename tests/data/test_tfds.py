"""TFDS builders: registration, build to array_record and read back, no TensorFlow."""

import importlib.util
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

import lmdvit_jax.data  # noqa: F401  (registers the builders)
from lmdvit_jax.data import readers, specs, synthetic
from tests.helpers import REPO, subprocess_env

from .builders import build_gopro, build_reloblur


def run_python(code: str) -> str:
  env = subprocess_env()
  out = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
  )
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_tensorflow_is_not_installed():
  assert importlib.util.find_spec('tensorflow') is None


def test_import_registers_builders_in_either_order_with_plain_imports():
  out = run_python(
    'import sys, lmdvit_jax.data\n'
    'print("import hooks added:", sum(type(h).__module__.startswith("lmdvit_jax")'
    ' for h in sys.meta_path))\n'
    'import tensorflow_datasets as tfds\n'
    'print(sorted(b for b in tfds.list_builders(with_community_datasets=False)'
    ' if b in ("reloblur", "gopro", "synthetic_local_blur")))\n'
  )
  assert 'import hooks added: 0' in out
  assert "['gopro', 'reloblur', 'synthetic_local_blur']" in out
  out = run_python(
    'import tensorflow_datasets as tfds, lmdvit_jax.data\n'
    'print(tfds.builder("reloblur").name, tfds.builder("gopro/blur_gamma").builder_config.blur)\n'
    'print(len(tfds.builder("reloblur").MANUAL_DOWNLOAD_INSTRUCTIONS) > 100)\n'
  )
  assert out.split() == ['reloblur', 'blur_gamma', 'True']


def read_split(data_dir, name, split):
  import tensorflow_datasets as tfds

  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return [source[i] for i in range(len(source))]


def check_features(example):
  h, w = example['blur'].shape[:2]
  assert example['blur'].dtype == np.uint8 and example['blur'].shape == (h, w, 3)
  assert example['sharp'].dtype == np.uint8 and example['sharp'].shape == (h, w, 3)
  assert example['mask'].dtype == np.uint8 and example['mask'].shape == (h, w, 1)
  assert set(np.unique(example['mask'])) <= {0, 1}


def test_synthetic_build_and_read_round_trip(tmp_path):
  from lmdvit_jax.data import tfds_builders

  builder = tfds_builders.build('synthetic_local_blur/tiny', data_dir=str(tmp_path))
  files = sorted(p.name for p in Path(builder.data_dir).iterdir())
  assert any('.array_record-' in f for f in files), files
  for split, count in (('train', 8), ('test', 4)):
    examples = read_split(tmp_path, 'synthetic_local_blur/tiny', split)
    assert len(examples) == count
    made = synthetic.SyntheticSource(count=count, size=32, seed=0, split=split)
    by_name = {made.example(i)['name']: made.example(i) for i in range(count)}
    for ex in examples:
      check_features(ex)
      want = by_name[ex['name'].decode() if isinstance(ex['name'], bytes) else ex['name']]
      for key in ('blur', 'sharp', 'mask'):
        np.testing.assert_array_equal(ex[key], want[key])  # PNG is lossless.
  assert 'tensorflow' not in sys.modules


def test_reloblur_build_and_read_round_trip(tmp_path):
  from lmdvit_jax.data import tfds_builders

  build_reloblur(tmp_path / 'manual')
  tfds_builders.build(
    'reloblur', data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'manual')
  )
  for split in ('train', 'test'):
    reader = readers.ReLoBlurSource(tmp_path / 'manual', split)
    stored = specs.open_source(f'tfds:reloblur?data_dir={tmp_path / "tfds"}', split=split)
    assert len(stored) == len(reader)
    by_name = {stored.example(i)['name']: stored.example(i) for i in range(len(stored))}
    assert sorted(by_name) == reader.names
    for i, name in enumerate(reader.names):
      check_features(by_name[name])
      for key in ('blur', 'sharp', 'mask'):
        np.testing.assert_array_equal(by_name[name][key], reader.example(i)[key])
  sample = stored[0]
  assert sample['blur'].dtype == np.float32 and sample['mask'].shape[-1] == 1


def test_gopro_build_blur_gamma_and_missing_manual_dir(tmp_path):
  from lmdvit_jax.data import tfds_builders

  truth = build_gopro(tmp_path / 'manual', splits=('test',))
  with pytest.raises(FileNotFoundError, match='GOPRO_Large'):
    tfds_builders.build('gopro', data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'no'))
  tfds_builders.build(
    'gopro/blur_gamma', data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'manual')
  )  # Only test exists: train skipped.
  examples = read_split(tmp_path / 'tfds', 'gopro/blur_gamma', 'test')
  assert len(examples) == len(truth['test'])
  for ex in examples:
    check_features(ex)
    _, gamma, sharp = truth['test'][ex['name'].decode()]
    np.testing.assert_array_equal(ex['blur'], gamma)
    np.testing.assert_array_equal(ex['sharp'], sharp)
    assert ex['mask'].all()


def test_build_command_line(tmp_path):
  env = subprocess_env()
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'lmdvit_jax.data.build',
      'synthetic_local_blur/tiny',
      '--data_dir',
      str(tmp_path),
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  assert 'test: 4 examples' in out.stdout
  bad = subprocess.run(
    [sys.executable, '-m', 'lmdvit_jax.data.build', 'relobur'],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=60,
  )
  assert bad.returncode != 0 and 'unknown dataset' in bad.stderr
