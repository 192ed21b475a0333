"""What a workdir records of its run: the config (and the earlier ones a
resume changed), and logs of one row per step."""

import json

import pytest

from lmdvit_jax import run_record


def test_a_resume_with_other_settings_is_refused_unless_asked(tmp_path):
  config = {
    'batch_size': 12,
    'num_train_steps': 100,
    'log_every_steps': 10,
    'optim': {'lr': 2e-4, 'restart_every': 0},
    'eval': {'max_images': 8},
  }
  assert run_record.record_config(tmp_path, config, None) == []  # A new run records it.
  same = run_record.record_config(tmp_path, config, 40)
  assert same == [] and not list(tmp_path.glob('config.*.json'))
  # What it computes: refused, every difference named, nothing written.
  other = {**config, 'batch_size': 8, 'optim': {'lr': 1e-3, 'restart_every': 0}}
  with pytest.raises(
    ValueError,
    match=r"step 40 with another config \(batch_size: 12 -> 8; "
    r"optim.lr: 0.0002 -> 0.001\).*--allow_config_change",
  ):
    run_record.record_config(tmp_path, other, 40)
  assert json.loads((tmp_path / 'config.json').read_text()) == config
  # The schedule spans num_train_steps here (no restarts): extending changes it.
  with pytest.raises(ValueError, match='num_train_steps: 100 -> 200'):
    run_record.record_config(tmp_path, {**config, 'num_train_steps': 200}, 40)
  # Asked for: the earlier config kept as config.40.json, the change returned for the log.
  changes = run_record.record_config(tmp_path, other, 40, allow_change=True)
  assert changes == ['batch_size: 12 -> 8', 'optim.lr: 0.0002 -> 0.001']
  assert json.loads((tmp_path / 'config.40.json').read_text()) == config
  assert json.loads((tmp_path / 'config.json').read_text()) == other
  # How often it logs or evaluates, and its length under restarts, change freely.
  restarting = {**other, 'optim': {'lr': 1e-3, 'restart_every': 2000}}
  run_record.record_config(tmp_path, restarting, 50, allow_change=True)
  free = {**restarting, 'num_train_steps': 900, 'log_every_steps': 1, 'eval': {'max_images': 2}}
  assert len(run_record.record_config(tmp_path, free, 60)) == 3


def test_rows_past_a_step_are_dropped_atomically(tmp_path):
  log = tmp_path / 'metrics.jsonl'
  log.write_text(''.join(json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in (2, 4, 6)))
  run_record.drop_rows_after(log, 4)
  assert [json.loads(l)['step'] for l in log.read_text().splitlines()] == [2, 4]
  run_record.drop_rows_after(log, 0)  # Nothing restored: no row is kept.
  assert log.read_text() == ''
  run_record.drop_rows_after(tmp_path / 'missing.jsonl', 3)  # Nothing to do.
