"""One file to ship: `jax.export` of the deblurring pipeline, run without the package."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lmdvit_jax import export, inference
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import LMDViT, init_params
from tests.helpers import REPO, TINY


@pytest.fixture(scope='module')
def exported_file(checkpoint, tmp_path_factory):
  """The tiny checkpoint exported by the command, for cpu, cuda and tpu together."""
  out = tmp_path_factory.mktemp('export') / 'tiny.jaxexport'
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'lmdvit_jax.export',
      f'--checkpoint={checkpoint}',
      '--size=100x130',
      '--batch=2',
      '--platforms=cpu,cuda,tpu',
      '--capacity=exact',
      f'--output={out}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr
  assert 'Wrote' in run.stdout
  return out


def test_exported_model_runs_with_jax_alone_and_matches_the_model(checkpoint, exported_file):
  meta = json.loads(exported_file.with_name(exported_file.name + '.json').read_text())
  assert meta['platforms'] == ['cpu', 'cuda', 'tpu']
  assert meta['input']['shape'] == [2, 100, 130, 3] and meta['padding']['canvas'] == [128, 256]
  assert meta['params'] == 'embedded as constants'
  # A fresh interpreter that imports jax and numpy only.
  script = (
    'import sys, jax, numpy as np\n'
    'assert not any(m.startswith("lmdvit_jax") for m in sys.modules)\n'
    f'e = jax.export.deserialize(bytearray(open({str(exported_file)!r}, "rb").read()))\n'
    'x = np.random.default_rng(0).uniform(size=(2, 100, 130, 3)).astype(np.float32)\n'
    'out = e.call(x)\n'
    f'np.save({str(exported_file.parent / "out.npy")!r}, np.asarray(out["restored"]))\n'
    'assert not any(m.startswith("lmdvit_jax") for m in sys.modules)\n'
  )
  run = subprocess.run(
    [sys.executable, '-c', script],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=exported_file.parent,
  )
  assert run.returncode == 0, run.stderr
  restored = np.load(exported_file.parent / 'out.npy')
  x = np.random.default_rng(0).uniform(size=(2, 100, 130, 3)).astype(np.float32)
  want = inference.Deblurrer.from_checkpoint(
    checkpoint, settings=InferenceSettings(capacity='exact', tile=0), warmup=False
  ).deblur_batch(x)
  assert restored.shape == want.restored.shape
  np.testing.assert_allclose(restored, want.restored, atol=1e-6)


def test_a_self_ensemble_exports_and_keep_maps_come_back():
  model = LMDViT(**{**TINY, 'capacity': 'exact'})
  deblurrer = inference.Deblurrer(
    model, init_params(model, 0), InferenceSettings(self_ensemble=8, tile=0), warmup=False
  )
  exported = export.export(deblurrer, 64, 200)
  x = np.random.default_rng(1).uniform(size=(1, 64, 200, 3)).astype(np.float32)
  out = export.run(exported, x)
  want = deblurrer.deblur_batch(x)
  np.testing.assert_allclose(np.asarray(out['restored']), want.restored, atol=1e-6)
  for got, ref in zip(out['kept'], want.decisions):
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-6)


def test_wrong_shapes_and_damaged_files_get_one_clear_line(exported_file, tmp_path):
  exported = export.load(exported_file)
  with pytest.raises(
    ValueError, match=r'takes float32\[2, 100, 130, 3\].*got float32\[1, 100, 130'
  ):
    export.run(exported, np.zeros((1, 100, 130, 3), np.float32))
  with pytest.raises(ValueError, match='got float64'):
    export.run(exported, np.zeros((2, 100, 130, 3)))
  damaged = tmp_path / 'damaged.jaxexport'
  damaged.write_bytes(exported_file.read_bytes()[:1000])
  with pytest.raises(ValueError, match=f'{damaged} is not a jax.export file or is damaged'):
    export.load(damaged)
  with pytest.raises(FileNotFoundError):
    export.load(tmp_path / 'missing.jaxexport')
  for bad in ('100', '100x', 'axb', '0x100'):
    with pytest.raises(ValueError, match='--size must be'):
      export.parse_size(bad)
  with pytest.raises(ValueError, match='--platforms'):
    export.parse_platforms('cpu,gpu')


def test_export_command_fails_in_one_line_and_writes_nothing(checkpoint, tmp_path):
  out = tmp_path / 'm.jaxexport'
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'lmdvit_jax.export',
      f'--checkpoint={checkpoint}',
      '--size=100by130',
      f'--output={out}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert run.returncode == 2
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('export.py: error: --size must be')
  assert not out.exists()


def test_the_file_is_about_the_params_at_any_size(tmp_path):
  """Nothing of the image's size is stored: a 16x larger canvas, about the same file."""
  model = LMDViT(**{**TINY, 'capacity': 'exact'})
  deblurrer = inference.Deblurrer(
    model, init_params(model, 0), InferenceSettings(tile=0), warmup=False
  )
  params = sum(a.nbytes for a in __import__('jax').tree_util.tree_leaves(deblurrer.params))
  small = len(export.export(deblurrer, 256, 256).serialize())
  large = len(export.export(deblurrer, 1024, 4096).serialize())
  assert small < 1.3 * params and large < 1.3 * params, (small, large, params)
  assert abs(large - small) < 0.05 * params, (small, large)


def test_an_existing_file_is_replaced_only_when_asked(tmp_path):
  out = tmp_path / 'm.jaxexport'
  assert export.check_output(out) == out
  out.write_bytes(b'an earlier export')
  with pytest.raises(FileExistsError, match='exists; give --overwrite'):
    export.check_output(out)
  assert export.check_output(out, overwrite=True) == out
  with pytest.raises(IsADirectoryError):
    export.check_output(tmp_path)
  assert not (tmp_path / 'new').exists() and export.check_output(tmp_path / 'new' / 'm')
  assert not (tmp_path / 'new').exists()  # Checked, not created.
