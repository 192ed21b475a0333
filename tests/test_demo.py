"""The demo pipeline end to end with a tiny budget: train, evaluate, report targets."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path):
  workdir = tmp_path / 'demo'
  cmd = [sys.executable, str(REPO / 'demo.py'), f'--workdir={workdir}',
         '--config.num_train_steps=2', '--config.log_every_steps=1',
         '--config.checkpoint_every_steps=2', '--config.eval_every_steps=0',
         '--config.batch_size=2', '--config.model.embed_dim=8',
         '--config.model.depths=(2, 1, 1, 1, 1, 1, 1, 1, 2)',
         "--config.demo.data=synthetic?size=64&count=2", '--config.demo.num_panels=1']
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for line in ('weighted PSNR gain over the input', 'PSNR over sharp regions',
               'pruning recall', 'pruning precision', 'kept fraction per pruning block'):
    assert line in out, out
  summary = json.loads((workdir / 'demo_eval' / 'summary.json').read_text())
  assert [t['requirement'] for t in summary['targets']] == ['>= 3', '>= 40', '>= 0.95', '>= 0.8']
  for t in summary['targets']:
    assert isinstance(t['met'], bool) and t['value'] == t['value']  # not NaN
  # Pruning stages encoder_0, encoder_1, decoder_2, decoder_3 at depths 2, 1, 1, 2.
  assert len(summary['kept_fraction_per_block']) == 6
  assert all(0 <= k <= 1 for k in summary['kept_fraction_per_block'])
  metrics = json.loads((workdir / 'demo_eval' / 'metrics.json').read_text())
  assert metrics['count'] == 2
  assert list((workdir / 'demo_eval' / 'panels').glob('*.png'))
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(lines[-1])['step'] == 2

  # The README's pruning analysis runs on the demo's checkpoint: one row per block.
  proc = subprocess.run(
      [sys.executable, str(REPO / 'benchmarks' / 'pruning_ranking.py'), f'--checkpoint={workdir}',
       '--data=synthetic?size=64&count=2'], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [l for l in proc.stdout.splitlines() if l.startswith('| encoder') or l.startswith('| decoder')]
  assert len(rows) == 6, proc.stdout
  for row in rows:
    auc = float(row.split('|')[2])
    assert 0 <= auc <= 1, row
