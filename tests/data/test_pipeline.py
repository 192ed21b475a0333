"""Training pipeline: mixture, determinism, exact resume, global batches on 4 devices."""

from pathlib import Path
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lmdvit_jax.data import pipeline
from tests.helpers import REPO, subprocess_env

from .builders import save


def constant_pairs(root: Path, value: int, n: int = 3, size=(40, 40)) -> str:
  for i in range(n):
    image = np.full(size + (3,), value, np.uint8)
    save(root / 'blur' / f'{i}.png', image)
    save(root / 'sharp' / f'{i}.png', image)
  return f'pairs:{root}'


def test_mixture_follows_the_weights(tmp_path):
  dark = constant_pairs(tmp_path / 'dark', 0)
  light = constant_pairs(tmp_path / 'light', 255)
  ds = pipeline.train_dataset([dark, light], [0.8, 0.2], patch_size=16, seed=0)
  light_share = np.mean([ds[i]['blur'][0, 0, 0] == 1.0 for i in range(500)])
  assert abs(light_share - 0.2) < 0.03
  only_dark = pipeline.train_dataset([dark, light], [1.0, 0.0], patch_size=16, seed=0)
  assert all(only_dark[i]['blur'].max() == 0.0 for i in range(50))
  with pytest.raises(ValueError, match='2 sources but 1 weights'):
    pipeline.train_dataset([dark, light], [1.0], patch_size=16, seed=0)


def test_elements_are_float_patches_and_depend_only_on_seed():
  a = pipeline.train_dataset(['synthetic?size=48'], patch_size=32, seed=3)
  b = pipeline.train_dataset(['synthetic?size=48'], patch_size=32, seed=3)
  c = pipeline.train_dataset(['synthetic?size=48'], patch_size=32, seed=4)
  x, y, z = a[5], b[5], c[5]
  assert x['blur'].shape == (32, 32, 3) and x['mask'].shape == (32, 32, 1)
  assert x['blur'].dtype == np.float32 and 0 <= x['blur'].min() and x['blur'].max() <= 1
  for key in ('blur', 'sharp', 'mask'):
    np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(x['sharp'], z['sharp'])


def test_synthetic_training_images_default_to_the_patch_size():
  (src,) = pipeline.open_train_sources(['synthetic'], patch_size=64)
  assert src.size == (64, 64) and src.split == 'train' and len(src) >= 100_000


def test_iterator_state_resumes_exactly():
  kwargs = dict(patch_size=32, batch_size=4, seed=1, num_threads=2)
  it = pipeline.make_train_iterator(['synthetic'], **kwargs)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = pipeline.make_train_iterator(['synthetic'], **kwargs)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert got['blur'].shape == (4, 32, 32, 3) and got['mask'].shape == (4, 32, 32, 1)
    for key in ('blur', 'sharp', 'mask'):
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
  fresh = pipeline.make_train_iterator(['synthetic'], **kwargs)
  assert not np.array_equal(np.asarray(next(fresh)['blur']), np.asarray(expected[0]['blur']))


def test_each_process_reads_its_block_of_every_global_batch(monkeypatch):
  """Processes concatenated in order give the one-process batches, in order."""
  kwargs = dict(patch_size=16, batch_size=4, seed=2, num_threads=1)
  one = pipeline.make_train_iterator(['synthetic?size=16'], **kwargs)
  expected = [one.next_local()['blur'] for _ in range(2)]
  monkeypatch.setattr(pipeline.jax, 'process_count', lambda: 2)
  local = []
  for pid in range(2):
    monkeypatch.setattr(pipeline.jax, 'process_index', lambda pid=pid: pid)
    it = pipeline.make_train_iterator(['synthetic?size=16'], **kwargs)
    local.append([it.next_local()['blur'] for _ in range(2)])
  for step, want in enumerate(expected):
    got = np.concatenate([local[0][step], local[1][step]])
    assert local[0][step].shape[0] == 2
    np.testing.assert_array_equal(got, want)


def test_a_position_resumes_a_job_of_another_number_of_processes(monkeypatch):
  """The position counts global batches: one process's position, after 3
  batches, resumes each of two processes at its rows of batch 4, and their
  position resumes one process there again. A position written before
  (this process's rows) is read as one of a job of as many processes."""
  kwargs = dict(patch_size=16, batch_size=4, seed=2, num_threads=1)
  spec = ['synthetic?size=16']
  one = pipeline.make_train_iterator(spec, **kwargs)
  for _ in range(3):
    one.next_local()
  position = one.get_state()
  assert position == {'batches': 3}
  want = one.next_local()['blur']

  monkeypatch.setattr(pipeline.jax, 'process_count', lambda: 2)
  halves, positions = [], []
  for pid in range(2):
    monkeypatch.setattr(pipeline.jax, 'process_index', lambda pid=pid: pid)
    it = pipeline.make_train_iterator(spec, **kwargs)
    it.set_state(position)
    halves.append(it.next_local()['blur'])
    positions.append(it.get_state())
  np.testing.assert_array_equal(np.concatenate(halves), want)
  assert positions == [{'batches': 4}] * 2
  legacy = pipeline.make_train_iterator(spec, **kwargs)  # process 1 of 2
  legacy.set_state({'next_index': 6})  # 3 batches of 2 rows
  np.testing.assert_array_equal(legacy.next_local()['blur'], halves[1])
  with pytest.raises(ValueError, match='Unknown data position'):
    legacy.set_state({'index': 6})

  monkeypatch.setattr(pipeline.jax, 'process_count', lambda: 1)
  monkeypatch.setattr(pipeline.jax, 'process_index', lambda: 0)
  again = pipeline.make_train_iterator(spec, **kwargs)
  again.set_state(positions[0])
  np.testing.assert_array_equal(again.next_local()['blur'], one.next_local()['blur'])


def test_iterator_from_config():
  import ml_collections

  config = ml_collections.ConfigDict(
    {
      'batch_size': 2,
      'patch_size': 16,
      'seed': 0,
      'data': {'sources': ('synthetic',), 'weights': (1.0,), 'num_threads': 1},
    }
  )
  batch = next(pipeline.make_train_iterator_from_config(config))
  assert batch['sharp'].shape == (2, 16, 16, 3)


def test_global_batches_on_four_devices():
  code = textwrap.dedent('''
      import os
      os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
      import jax, numpy as np
      from lmdvit_jax.data import pipeline
      assert jax.device_count() == 4
      it = pipeline.make_train_iterator(['synthetic'], patch_size=32, batch_size=8, seed=0)
      batch = next(it)
      for key, c in (('blur', 3), ('sharp', 3), ('mask', 1)):
        a = batch[key]
        assert a.shape == (8, 32, 32, c) and a.dtype == np.float32, (key, a.shape)
        assert a.sharding.spec == jax.sharding.PartitionSpec('data'), a.sharding
        shards = a.addressable_shards
        assert len(shards) == 4 and all(s.data.shape == (2, 32, 32, c) for s in shards)
        assert len({s.device for s in shards}) == 4
      mesh = jax.make_mesh((2, 2), ('data', 'model'))
      it = pipeline.make_train_iterator(['synthetic'], patch_size=16, batch_size=4, mesh=mesh)
      assert next(it)['blur'].addressable_shards[0].data.shape == (2, 16, 16, 3)
      try:
        pipeline.make_train_iterator(['synthetic'], patch_size=16, batch_size=6)
      except ValueError as e:
        assert 'divisible' in str(e)
      else:
        raise AssertionError('batch 6 on 4 devices should fail')
      print('OK')
  ''')
  env = subprocess_env()
  env.pop('XLA_FLAGS', None)
  out = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=REPO, timeout=180
  )
  assert out.returncode == 0 and out.stdout.strip().endswith('OK'), out.stderr[-3000:]
