"""The demo: shipped weights that deblur held-out images, and the train path end to end."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from lmdvit_jax import calibration, checkpointing, shipped_weights
from tests.helpers import REPO, run_commands, subprocess_env


def _demo(tmp_path, *args, timeout=900):
  return subprocess.run(
    [sys.executable, str(REPO / 'demo.py'), *args],
    cwd=tmp_path,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_shipped_weights_load_and_beat_the_input_on_held_out_images(tmp_path):
  """`python demo.py` (no flags but a workdir and a smaller held-out set):
  installs the shipped weights, which restore held-out photos better than the
  blurred input and leave sharp regions alone."""
  workdir = tmp_path / 'demo'
  proc = _demo(
    tmp_path,
    f'--workdir={workdir}',
    '--config.demo.data=synthetic?size=256x256&count=2&seed=7',
    '--config.demo.outside_data=outside?size=256x256&count=1',
    '--config.demo.num_panels=2',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for line in (
    'weighted PSNR gain inside the blur mask',
    'PSNR outside the blur mask',
    'pruning recall',
    'pruning precision',
    'targets met',
    'overview.png',
    'targets met on the outside set',
  ):
    assert line in out, out
  summary = json.loads((workdir / 'demo_eval' / 'summary.json').read_text())
  mean = summary['mean']
  assert mean['wpsnr'] > mean['input_wpsnr'] and mean['psnr'] > mean['input_psnr'], mean
  assert mean['sharp_psnr'] > 40, mean
  assert summary['model'].startswith('shipped weights')
  # The shipped model.json sets the demo's inference: an 8-pass self-ensemble.
  assert summary['self_ensemble'] == 8
  assert checkpointing.read_inference_settings(workdir) == {'self_ensemble': 8}
  assert checkpointing.read_inference_settings(shipped_weights.WEIGHTS_DIR) == {'self_ensemble': 8}
  assert '8 passes per image' in out
  assert (workdir / 'demo_eval' / 'overview.png').is_file()
  # Installed: a checkpoint and its inference settings, no copies of run logs.
  assert not list(workdir.glob('demo_weights_*')) and not list(workdir.glob('init_*'))
  # The workdir is a checkpoint directory for the other commands.
  kwargs, params = checkpointing.load_model(workdir)
  want_kwargs, want_params = shipped_weights.load_weights()
  assert kwargs == want_kwargs
  np.testing.assert_array_equal(
    params['output_proj']['kernel'], want_params['output_proj']['kernel']
  )


def test_shipped_weights_carry_only_what_a_user_needs_and_their_lineage():
  weights = shipped_weights.WEIGHTS_DIR
  assert sorted(p.name for p in weights.iterdir() if p.is_file()) == [
    'README.md',
    'inference.json',
    'model.json',
    'params.npz',
  ]
  readme = (weights / 'README.md').read_text()
  assert readme.count('python demo.py --train') == 3 and '--export_weights' in readme
  assert '--config.seed=7' in readme and 'docs/demo_runs/' in readme
  assert (weights / shipped_weights.PARAMS_FILE).stat().st_size < 15 * 2**20
  # The runs' logs live in docs/, and nothing holds a path of the machine that trained them.
  runs = REPO / 'docs' / 'demo_runs'
  for run in ('e', 'f', 'k'):
    rows = [json.loads(l) for l in (runs / f'{run}_metrics.jsonl').read_text().splitlines()]
    config = json.loads((runs / f'{run}_config.json').read_text())
    assert rows[-1]['step'] == config['num_train_steps']
  for path in [*weights.iterdir(), *runs.iterdir()]:
    if path.suffix in ('.json', '.jsonl', '.md'):
      text = path.read_text()
      assert not any(root in text for root in ('/tmp/', '/home/', '/root/', '/work/')), path


def test_train_path_end_to_end(tmp_path):
  """`python demo.py --train` with a tiny budget: trains, evaluates, reports targets."""
  workdir = tmp_path / 'demo'
  proc = _demo(
    tmp_path,
    f'--workdir={workdir}',
    '--train',
    '--config.num_train_steps=2',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=2',
    '--config.eval_every_steps=0',
    '--config.batch_size=2',
    '--config.model.embed_dim=8',
    '--config.model.depths=(1, 1, 1, 1, 1, 1, 1, 2, 1)',
    '--config.demo.data=synthetic?size=128x64&count=2',
    '--config.demo.num_panels=1',
    '--config.demo.outside_data=outside?size=128x64&count=1',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / 'demo_eval' / 'summary.json').read_text())
  assert [t['requirement'] for t in summary['targets']] == [
    '>= 1.0',
    '>= 0.3',
    '>= 45',
    '>= 0.9',
    '>= 0.6',
  ]
  for t in summary['targets']:
    assert isinstance(t['met'], bool)
  assert summary['model'] == 'trained here with 2 steps'
  assert summary['outside']['count'] == 1 and len(summary['outside']['targets']) == 5
  assert 'targets met on the outside set' in proc.stdout
  # The command-line overrides are kept, for the record an export writes.
  flags = shipped_weights.override_flags(workdir)
  assert '--config.num_train_steps=2' in flags, flags
  assert '--config.model.depths="(1, 1, 1, 1, 1, 1, 1, 2, 1)"' in flags, flags
  assert '--config.demo.data="synthetic?size=128x64&count=2"' in flags, flags
  assert len(flags) == 10, flags
  # Pruning in decoder_2 (depth 2: two predictors) and decoder_3 (depth 1: one).
  assert len(summary['kept_fraction_per_block']) == 3
  rows = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(r)['step'] for r in rows] == [1, 2]
  assert len(summary['images']) == 2 and (workdir / 'demo_eval' / 'overview.png').is_file()
  # The README's pruning analysis runs on the demo's checkpoint: one row per block.
  ranking = ['-m', 'analyses.pruning_ranking', f'--checkpoint={workdir}']
  whole, tiled = run_commands(
    [
      [*ranking, '--data=synthetic?size=64&count=2'],
      [*ranking, '--data=synthetic?size=128&count=1', '--tile=64'],
    ],
    cwd=tmp_path,
    env=subprocess_env(),
  )
  for proc in (whole, tiled):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([l for l in proc.stdout.splitlines() if l.startswith('| decoder')]) == 3, proc.stdout
  assert 'scored as 64x64 tiles' in tiled.stdout


def test_export_weights_round_trips_and_leaves_no_temporary_files(checkpoint, tmp_path):
  out = shipped_weights.export_weights(
    checkpoint, tmp_path / 'weights', self_ensemble=4, keep_threshold=0.3
  )
  kwargs, params = shipped_weights.load_weights(out)
  want_kwargs, want = checkpointing.load_model(checkpoint)
  assert kwargs == {**want_kwargs, 'keep_threshold': 0.3}
  flat = lambda tree: {
    '/'.join(str(k.key) for k in p): np.asarray(v)
    for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }
  got, expected = flat(params), flat(want)
  assert got.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name], value)
  assert checkpointing.read_inference_settings(out) == {'self_ensemble': 4}
  assert sorted(p.name for p in out.iterdir()) == sorted(
    [checkpointing.INFERENCE_FILE, checkpointing.MODEL_FILE, shipped_weights.PARAMS_FILE]
  )


def test_keep_threshold_is_calibrated_on_validation_photos(checkpoint, monkeypatch):
  opened = []
  real_open = calibration.open_source
  monkeypatch.setattr(
    calibration,
    'open_source',
    lambda spec, split: opened.append(split) or real_open(spec, split=split),
  )
  threshold, rows = calibration.calibrate_keep_threshold(
    checkpoint, 'synthetic?size=64&count=2', recall=0.0, candidates=(0.3, 0.6)
  )
  assert opened == ['val']  # Never the training photos, never the held-out ones.
  assert [r['keep_threshold'] for r in rows] == [0.3, 0.6]
  assert threshold == 0.6  # Any recall reaches 0: the highest candidate.
  for r in rows:
    assert {
      'recall',
      'precision',
      'kept_fraction',
      'wpsnr_gain',
      'psnr_gain',
      'sharp_psnr',
    } <= r.keys()


def test_keep_threshold_choice_keeps_the_recall_or_falls_back_to_the_best_recall():
  rows = [
    dict(keep_threshold=0.3, recall=0.95),
    dict(keep_threshold=0.5, recall=0.91),
    dict(keep_threshold=0.7, recall=0.80),
  ]
  assert calibration.choose_keep_threshold(rows, 0.9) == 0.5
  assert calibration.choose_keep_threshold(rows, 0.5) == 0.7
  assert calibration.choose_keep_threshold(rows, 0.99) == 0.3


def _summary():
  mean = dict(
    input_psnr=30.0,
    psnr=30.5,
    input_wpsnr=20.0,
    wpsnr=21.0,
    sharp_psnr=50.0,
    prune_recall=0.9,
    prune_precision=0.5,
  )
  return {
    'mean': mean,
    'count': 2,
    'data': 'synthetic?count=2',
    'keep_threshold': 0.5,
    'calibration': None,
  }


@pytest.mark.parametrize('init', [None, '/a/path/of/this/machine'])
def test_the_training_record_names_the_run_it_continued_without_its_path(tmp_path, init):
  run, out = tmp_path / 'run', tmp_path / 'out'
  for d in (run, out):
    d.mkdir()
  for stale in ('init_README.md', 'init_eval.jsonl', 'metrics.jsonl', 'config.json'):
    (out / stale).write_text('from an export of the old layout\n')
  (out / 'notes.txt').write_text('a file of the user\'s\n')
  (run / 'metrics.jsonl').write_text('{"step": 5}\n')
  (run / 'config.json').write_text(
    json.dumps(
      {
        'seed': 1,
        'num_train_steps': 5,
        'batch_size': 8,
        'patch_size': 64,
        'init_from': init or '',
        'data': {'sources': ['synthetic?size=128&photos=packages']},
      }
    )
  )
  shipped_weights.write_training_record(run, out, _summary())
  readme = (out / 'README.md').read_text()
  assert '64x64 crops of `synthetic?size=128&photos=packages`' in readme, readme
  assert sorted(p.name for p in out.iterdir()) == ['README.md', 'notes.txt']
  if init:
    assert '--config.init_from=FIRST --config.seed=1 --config.num_train_steps=5' in readme
    assert init not in readme
  else:
    assert 'trained from scratch' in readme and 'init_from' not in readme


def _run_and_out(tmp_path, init_from=''):
  """A training workdir (its config.json only) and an empty export folder."""
  run, out = tmp_path / 'run', tmp_path / 'out'
  for d in (run, out):
    d.mkdir()
  (run / 'config.json').write_text(
    json.dumps(
      {'seed': 3, 'num_train_steps': 7, 'batch_size': 8, 'patch_size': 64, 'init_from': init_from}
    )
  )
  return run, out


def test_the_training_record_spells_out_every_override(tmp_path):
  run, out = _run_and_out(tmp_path, init_from='/w/e')
  (run / shipped_weights.OVERRIDES_FILE).write_text(
    json.dumps(
      {
        'seed': 3,
        'optim.lr': 0.0002,
        'init_from': '/w/e',
        'data.sources': ['synthetic?size=96'],
        'loss.sharp': 30.0,
      }
    )
  )
  shipped_weights.write_training_record(run, out, _summary())
  readme = (out / 'README.md').read_text()
  assert (
    'python demo.py --train --workdir=WORKDIR --config.init_from=FIRST --config.seed=3 '
    '--config.optim.lr=0.0002 --config.data.sources="(\'synthetic?size=96\',)" '
    '--config.loss.sharp=30.0\n'
  ) in readme, readme
  assert '64x64 crops.' in readme or '64x64 crops,' in readme  # a config without data sources
  assert not (out / shipped_weights.OVERRIDES_FILE).exists() and '/w/e' not in readme


def test_the_training_record_shows_the_keep_threshold_calibration(tmp_path):
  run, out = _run_and_out(tmp_path)
  summary = _summary()
  summary['calibration'] = [
    dict(
      keep_threshold=t,
      recall=r,
      precision=0.5,
      kept_fraction=0.2,
      wpsnr_gain=0.4,
      psnr_gain=g,
      sharp_psnr=50.0,
    )
    for t, r, g in ((0.5, 0.92, 0.25), (0.6, 0.88, -0.05))
  ]
  shipped_weights.write_training_record(run, out, summary)
  readme = (out / 'README.md').read_text()
  assert 'validation images (photos in neither the training nor the held-out split)' in readme
  assert '| 0.5 | 0.920 | 0.500 | 0.200 | +0.40 | +0.25 | 50.00 |' in readme, readme
  assert '| 0.6 | 0.880 | 0.500 | 0.200 | +0.40 | -0.05 | 50.00 |' in readme, readme
