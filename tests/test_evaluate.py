"""evaluate.py end to end on a tiny random model and a folder in the official .npy format."""

import json

from absl import flags
from absl.testing import flagsaver
import numpy as np
from PIL import Image
import pytest

import evaluate
from lmdvit_jax import checkpointing, evaluation
from lmdvit_jax.inference import Deblurrer, DeblurResult, DecisionBlock
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import LMDViT
from lmdvit_jax.tiling import PadGeometry
from tests.helpers import run_commands

H, W = 100, 120  # pads to 128 x 128


def _npy_folder(root):
  """Two images in the official format: a local blob mask and an all-ones mask."""
  rng = np.random.default_rng(0)
  root.mkdir()
  masks = [np.zeros((H, W), np.float64), np.ones((H, W), np.float64)]
  masks[0][30:70, 40:90] = 1
  for i, mask in enumerate(masks):
    gt = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    noise = rng.integers(-40, 41, (H, W, 3)) * mask[..., None]
    blur = np.clip(gt + noise, 0, 255).astype(np.uint8)
    np.save(
      root / f'img_{i}.npy', {'img_blur': blur, 'img_gt': gt, 'blur_mask': mask}, allow_pickle=True
    )
  return root


def _psnr(a, b, mask=None):
  err = np.square(a.astype(np.float64) / 255 - b.astype(np.float64) / 255)
  if mask is None:
    return 10 * np.log10(1 / (err.mean() + 1e-8))
  m = np.broadcast_to(mask[..., None], err.shape)
  return 10 * np.log10(1 / ((err * m).sum() / m.sum()))


@pytest.fixture(scope='module')
def evaluated(checkpoint, tmp_path_factory):
  """Runs evaluate.py's main in-process (so the compiled model is shared)."""
  tmp = tmp_path_factory.mktemp('eval')
  data, out = _npy_folder(tmp / 'npy'), tmp / 'out'
  argv = [
    'evaluate.py',
    f'--checkpoint={checkpoint}',
    f'--data=npy:{data}',
    f'--output={out}',
    '--capacity=masked',
    '--num_panels=1',
    '--save_images',
  ]
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    evaluate.main(argv[:1])
  return data, out


def test_metrics_json_schema_and_values(evaluated):
  _, out = evaluated
  summary = json.loads((out / 'metrics.json').read_text())
  mean = summary['mean']
  for key in (
    'psnr',
    'ssim',
    'wpsnr',
    'wssim',
    'sharp_psnr',
    'input_psnr',
    'input_wpsnr',
    'prune_precision',
    'prune_recall',
    'kept_fraction',
    'seconds_per_image',
  ):
    assert key in mean, key
  assert summary['count'] == 2 and [r['name'] for r in summary['images']] == ['img_0', 'img_1']
  assert 5 < mean['psnr'] < 80 and -1 < mean['ssim'] <= 1
  assert 0 <= mean['prune_precision'] <= 1 and 0 <= mean['prune_recall'] <= 1
  assert 0 <= mean['kept_fraction'] <= 1 and mean['seconds_per_image'] > 0
  assert summary['params'] > 0 and mean['flops'] > 0
  assert summary['model']['capacity'] == 'masked'
  # The all-ones mask has no sharp pixels: null for that image, ignored by the mean.
  first, second = summary['images']
  assert second['sharp_psnr'] is None and first['sharp_psnr'] is not None
  assert mean['sharp_psnr'] == pytest.approx(first['sharp_psnr'])
  # Per-block pruning scores, one entry per predicting block (11 in the tiny model).
  assert len(summary['blocks']) == 11 and summary['blocks'][2]['shifted'] is True
  assert len(first['blocks']['precision']) == 11
  assert first['prune_precision'] == pytest.approx(np.mean(first['blocks']['precision']))
  # An all-ones mask: every kept image pixel is blurred, so precision is 1
  # (or 0 where a block kept no image pixel) and recall is the kept share.
  assert all(np.isclose(p, 0) or np.isclose(p, 1) for p in second['blocks']['precision'])
  assert max(second['blocks']['precision']) == pytest.approx(1.0)


def test_scores_match_an_independent_computation(evaluated):
  data, out = evaluated
  summary = json.loads((out / 'metrics.json').read_text())
  for record in summary['images']:
    item = np.load(data / f'{record["name"]}.npy', allow_pickle=True).item()
    restored = np.asarray(Image.open(out / 'images' / f'{record["name"]}.png'))
    assert restored.shape == (H, W, 3)
    mask = item['blur_mask']
    assert record['psnr'] == pytest.approx(_psnr(restored, item['img_gt']), abs=1e-3)
    assert record['wpsnr'] == pytest.approx(_psnr(restored, item['img_gt'], mask), abs=1e-3)
    assert record['input_psnr'] == pytest.approx(_psnr(item['img_blur'], item['img_gt']), abs=1e-3)
    assert record['input_wpsnr'] == pytest.approx(
      _psnr(item['img_blur'], item['img_gt'], mask), abs=1e-3
    )
  mean = summary['mean']
  assert mean['psnr'] == pytest.approx(np.mean([r['psnr'] for r in summary['images']]))


def test_table_and_panels(evaluated):
  _, out = evaluated
  table = (out / 'table.md').read_text()
  assert table.startswith(
    '| Method | PSNR | SSIM | PSNR_w | SSIM_w | Time | Params | MACs | XLA FLOPs |'
  )
  row = [line for line in table.splitlines() if 'lmdvit-jax' in line]
  assert len(row) == 1 and len(row[0].split('|')) == 11
  summary = json.loads((out / 'metrics.json').read_text())
  assert f'{summary["mean"]["psnr"]:.2f}' in row[0]
  # MACs are half the XLA FLOPs (2 FLOPs per multiply-add); the paper's column is MACs.
  macs, flops = (float(c.strip()[:-1]) for c in row[0].split('|')[8:10])
  assert macs == pytest.approx(flops / 2, rel=0.01)
  paper = [line for line in table.splitlines() if 'paper' in line][0]
  assert '1.485T | - |' in paper
  panels = sorted((out / 'panels').iterdir())
  assert [p.name for p in panels] == ['000_img_0.png']  # --num_panels=1
  with Image.open(panels[0]) as im:
    # 4 image tiles and 9 stage tiles of the 100x120 input, 5 columns x 3 rows.
    assert im.mode == 'RGB' and im.width > 5 * W and im.height > 3 * H
  assert not list(out.rglob('*.tmp'))


def test_pruning_scores_ignore_padding():
  g = PadGeometry(4, 8, 8, 8)  # two padded rows above and below
  keep_all = np.ones((2, 2), np.uint8)
  result = DeblurResult(
    np.zeros((4, 8, 3)), (keep_all,), (0,), (DecisionBlock('encoder_0', 0, False),), g, 0.0, 0.0
  )
  mask = np.ones((4, 8, 1), np.float32)
  scores = evaluation.pruning_scores(result, mask)
  # Counting the padding as sharp pixels would give precision 0.5.
  assert scores['precision'][0] == pytest.approx(1.0)
  assert scores['recall'][0] == pytest.approx(1.0)
  assert scores['kept_fraction'][0] == pytest.approx(1.0)


def test_nan_handling_helpers():
  assert evaluation.nanmean([1.0, float('nan'), 3.0]) == 2.0
  assert np.isnan(evaluation.nanmean([float('nan')]))
  assert np.isnan(evaluation.nanmean([]))


@pytest.fixture(scope='module')
def cli_runs(checkpoint, tmp_path_factory):
  """evaluate.py's mistakes, in one interpreter (tests/entry_points.py): a bad
  data spec, a missing checkpoint, an output that is a file."""
  root = tmp_path_factory.mktemp('cli')
  (root / 'taken').write_text('')
  runs = {
    'bad_spec': [f'--checkpoint={checkpoint}', '--data=npz:/nowhere', f'--output={root}'],
    'no_checkpoint': [
      f'--checkpoint={root / "missing"}',
      '--data=synthetic?count=1',
      f'--output={root / "out"}',
    ],
    'output_is_a_file': [
      f'--checkpoint={checkpoint}',
      '--data=synthetic?count=1&size=64',
      f'--output={root / "taken"}',
    ],
  }
  procs = run_commands([['evaluate.py', *args] for args in runs.values()])
  return root, dict(zip(runs, procs))


def test_cli_errors(cli_runs):
  root, runs = cli_runs
  bad_spec, no_ckpt = runs['bad_spec'], runs['no_checkpoint']
  assert bad_spec.returncode != 0
  assert "Unknown data kind 'npz'" in bad_spec.stderr and 'npy' in bad_spec.stderr
  assert no_ckpt.returncode != 0
  assert 'checkpoint directory not found' in no_ckpt.stderr
  assert not (root / 'out' / 'metrics.json').exists()


def test_training_and_evaluate_py_score_alike(checkpoint, evaluated):
  """The in-training evaluation (`evaluation.run` on a Deblurrer) and evaluate.py agree,
  shifted blocks included: one evaluator."""
  from lmdvit_jax.data import open_source
  from lmdvit_jax.inference import Deblurrer

  data, out = evaluated
  kwargs, params = checkpointing.load_model(checkpoint)
  scored = evaluation.run(
    Deblurrer(LMDViT(**kwargs), params, warmup=False), open_source(f'npy:{data}')
  )
  written = json.loads((out / 'metrics.json').read_text())
  assert any(b['shifted'] for b in written['blocks'])
  for key in ('psnr', 'wpsnr', 'prune_precision', 'prune_recall', 'kept_fraction'):
    assert scored['mean'][key] == pytest.approx(written['mean'][key], rel=1e-6), key
  for mine, theirs in zip(scored['blocks'], written['blocks']):
    assert mine['recall'] == pytest.approx(theirs['recall'], rel=1e-6, nan_ok=True)


def test_bad_files_are_found_before_any_forward_pass(checkpoint, tmp_path, monkeypatch):
  data = _npy_folder(tmp_path / 'npy')
  item = np.load(data / 'img_1.npy', allow_pickle=True).item()
  del item['blur_mask']
  np.save(data / 'img_1.npy', item, allow_pickle=True)
  (data / 'img_2.npy').write_bytes(b'not numpy')
  calls = []
  monkeypatch.setattr(evaluation.Deblurrer, '__call__', lambda self, x: calls.append(x))
  with pytest.raises(evaluation.DataError, match=r'2 bad file\(s\).*img_1.*img_2'):
    evaluation.evaluate(
      str(checkpoint),
      f'npy:{data}',
      str(tmp_path / 'out'),
      InferenceSettings(capacity='masked'),
      progress=False,
    )
  assert not calls and not (tmp_path / 'out' / 'metrics.json').exists()
  monkeypatch.undo()
  summary = evaluation.evaluate(
    str(checkpoint),
    f'npy:{data}',
    str(tmp_path / 'out'),
    InferenceSettings(capacity='masked'),
    num_panels=0,
    skip_bad=True,
    progress=False,
  )
  written = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert summary['count'] == written['count'] == 1
  assert len(written['skipped']) == 2 and 'img_1' in written['skipped'][0]


def test_output_that_is_a_file_fails_before_work(cli_runs):
  run = cli_runs[1]['output_is_a_file']
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith('evaluate.py: error:')
  assert 'existing file' in run.stderr and 'Traceback' not in run.stderr


def test_tiled_evaluation_scores_the_whole_image(checkpoint, evaluated, tmp_path):
  """Forced tiles (a 384x384 canvas as 2x2 tiles of 256x256) score every metric,
  pruning ones included, for the whole image."""
  from lmdvit_jax.data import open_source

  data = 'synthetic?size=300x260&count=2'
  whole = evaluation.evaluate(
    str(checkpoint),
    data,
    str(tmp_path / 'whole'),
    InferenceSettings(capacity='masked', tile=0),
    num_panels=0,
    progress=False,
  )
  tiled = evaluation.evaluate(
    str(checkpoint),
    data,
    str(tmp_path / 'tiled'),
    InferenceSettings(capacity='masked', tile=256, tile_overlap=128),
    num_panels=1,
    progress=False,
  )
  written = json.loads((tmp_path / 'tiled' / 'metrics.json').read_text())
  assert written['sizes']['260x300']['tiles'].startswith('4 tiles of 256x256 (2x2')
  assert whole['sizes']['260x300']['tiles'] == 'whole'
  for key in ('psnr', 'wpsnr', 'sharp_psnr'):
    assert abs(tiled['mean'][key] - whole['mean'][key]) < 0.5, key
  for key in ('prune_precision', 'prune_recall', 'kept_fraction'):
    assert 0 <= tiled['mean'][key] <= 1, key
  assert list((tmp_path / 'tiled' / 'panels').glob('*.png'))
  assert len(open_source(data)) == tiled['count'] == 2


def test_an_image_without_blur_is_left_out_of_recall_and_counted(checkpoint, tmp_path):
  data = _npy_folder(tmp_path / 'npy')
  item = np.load(data / 'img_1.npy', allow_pickle=True).item()
  item['blur_mask'] = np.zeros_like(item['blur_mask'])
  item['img_blur'] = item['img_gt']
  np.save(data / 'img_1.npy', item, allow_pickle=True)
  summary = evaluation.evaluate(
    str(checkpoint),
    f'npy:{data}',
    str(tmp_path / 'out'),
    InferenceSettings(capacity='masked'),
    num_panels=0,
    progress=False,
  )
  written = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert written['images_without_blur'] == 1
  by_name = {r['name']: r for r in written['images']}
  assert by_name['img_1']['prune_recall'] is None  # NaN, written as null
  assert summary['mean']['prune_recall'] == pytest.approx(by_name['img_0']['prune_recall'])


def test_a_loaded_deblurrer_scores_as_its_checkpoint_does(checkpoint, tmp_path):
  """The demo scores two sets with one deblurrer (each size compiles once)."""
  data, settings = 'synthetic?size=128x64&count=1', InferenceSettings(capacity='masked')
  loaded = evaluation.evaluate(
    str(checkpoint), data, str(tmp_path / 'a'), settings, num_panels=0, progress=False
  )
  deblurrer = Deblurrer.from_checkpoint(checkpoint, settings=settings)
  given = evaluation.evaluate(
    str(checkpoint), data, str(tmp_path / 'b'), num_panels=0, progress=False, deblurrer=deblurrer
  )
  for key in evaluation.IMAGE_METRICS:
    assert given['mean'][key] == loaded['mean'][key], key
  with pytest.raises(ValueError, match='not both'):
    evaluation.evaluate(str(checkpoint), data, str(tmp_path / 'c'), settings, deblurrer=deblurrer)
