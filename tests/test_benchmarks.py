"""The benchmarks' shared helpers, the HLO reader of matmul_floor, and the
accelerator check in smoke mode."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, inference_parts, input_pipeline, matmul_floor
from lmdvit_jax.models import LMDViT, init_params
from tests.helpers import REPO, TINY, subprocess_env


def test_calibration_sets_every_predictor_to_the_target_share():
  """Exact mode is timed against a budget at its kept share: every block must keep about it."""
  model = LMDViT(**TINY)
  x = np.random.default_rng(0).uniform(size=(1, 256, 256, 3)).astype(np.float32)
  params = common.calibrate(model, init_params(model, 0), x, 0.3)
  out = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, x)
  shares = [float(np.mean(d)) for d in out.decisions if d.size >= 16]
  assert len(shares) >= 4
  np.testing.assert_allclose(shares, 0.3, atol=0.08)


def test_dot_shapes_reads_every_product_of_a_program():
  def program(x, w, q, k):
    # A linear layer over tokens, attention scores with two batch dimensions, and
    # the weight's gradient (contracting over batch and tokens).
    scores = jnp.einsum('bhqd,bhkd->bhqk', q, k)
    y = x @ w
    return y.sum() + scores.sum(), jnp.einsum('btc,bto->co', x, y)

  args = (jnp.ones((2, 10, 3)), jnp.ones((3, 5)), jnp.ones((2, 4, 6, 8)), jnp.ones((2, 4, 7, 8)))
  counts = matmul_floor.dot_shapes(jax.jit(program).lower(*args).as_text(dialect='hlo'))
  assert counts == {(1, 20, 3, 5): 1, (8, 6, 8, 7): 1, (1, 3, 20, 5): 1}
  assert sum(matmul_floor.flops(s) * c for s, c in counts.items()) == 2 * (
    20 * 3 * 5 + 8 * 6 * 8 * 7 + 3 * 20 * 5
  )


def test_accelerator_check_runs_every_part_in_smoke_mode(tmp_path):
  """The one-command device check cannot rot: every part runs at tiny sizes."""
  run = subprocess.run(
    [sys.executable, '-m', 'benchmarks.accelerator', '--smoke', f'--output={tmp_path}'],
    cwd=REPO,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads((tmp_path / 'accelerator.json').read_text())
  parts = report['parts']
  assert set(parts) == {'devices', 'parity', 'inference', 'train', 'data', 'demo', 'official'}
  assert parts['devices']['rows'][0]['platform'] == 'cpu'
  assert [r['precision'] for r in parts['parity']['rows']] == ['highest', 'default']
  assert all(r['decisions_equal'] and r['restored_max_abs'] < 1e-4 for r in parts['parity']['rows'])
  assert [(r['mode'], r['dtype']) for r in parts['inference']['rows']] == [
    ('dense', 'float32'),
    ('exact', 'bfloat16'),
    ('budget 0.25', 'float32'),
  ]
  assert all(r['seconds'] > 0 for r in parts['inference']['rows'])
  assert [(r['dtype'], r['remat'], r['train_capacity']) for r in parts['train']['rows']] == [
    ('float32', 'none', 'dense'),
    ('bfloat16', 'blocks', 0.25),
  ]
  assert all(r['images_per_s'] > 0 for r in parts['train']['rows'])
  assert all(r['crops_per_s'] > 0 for r in parts['data']['rows'])
  assert any('crops/s, the fastest train step takes' in n for n in parts['data']['notes'])
  demo = parts['demo']['rows'][0]
  assert demo['last_step'] > demo['first_step']
  assert 'no --official_repo' in parts['official']['notes'][0]
  table = (tmp_path / 'accelerator.md').read_text()
  assert '## inference' in table and '| mode | dtype |' in table


def test_input_pipeline_benchmark_parts(tmp_path):
  """The benchmark's data are in the layouts the readers take, and its table of parts adds up."""
  specs = input_pipeline.make_datasets(tmp_path, 2, (100, 140), (64, 96))
  assert set(specs) == {'reloblur', 'gopro'}
  cached = f'{specs["reloblur"]}?cache={tmp_path / "cache"}'
  row = input_pipeline.time_reader(cached, 2, 0, 2, patch=64, batch=4)
  assert row['crops_per_s'] > 0
  parts = input_pipeline.crop_parts(cached, patch=64, batch=4, batches=2)
  assert set(parts) >= {
    'read and crop',
    'flip',
    'float conversion',
    'batching',
    input_pipeline.ONE_PASS,
  }
  assert all(ms > 0 for ms in parts.values())


def test_inference_parts_finds_every_part_in_a_pruned_program():
  """The profile's parts come from op metadata: renaming a module or scope must not
  silently move its time into 'the rest'."""
  model = LMDViT(**{**TINY, 'capacity': 0.25})
  params = common.keep_all(model, init_params(model, 0))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 128, 128, 3)), jnp.float32)
  compiled = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, x).compile()
  parts = inference_parts.profile_parts(compiled, (params, x))
  assert set(parts) == set(inference_parts.PARTS)
  for part in inference_parts.PARTS:
    assert parts[part] > 0, (part, parts)
