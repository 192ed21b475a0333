"""Readers for every layout, and `open_source` specs."""

import logging

import numpy as np
import pytest

from lmdvit_jax.data import readers, specs
from lmdvit_jax.data.examples import DataError

from .builders import build_gopro, build_npy, build_reloblur, save


def assert_sample(sample, blur, sharp, mask):
  h, w = sharp.shape[:2]
  assert sample['blur'].shape == (h, w, 3) and sample['sharp'].shape == (h, w, 3)
  assert sample['mask'].shape == (h, w, 1)
  for key in ('blur', 'sharp', 'mask'):
    assert sample[key].dtype == np.float32
  np.testing.assert_array_equal(sample['blur'], blur / np.float32(255))
  np.testing.assert_array_equal(sample['sharp'], sharp / np.float32(255))
  np.testing.assert_array_equal(sample['mask'][..., 0], mask.astype(np.float32))


def test_reloblur_reads_triples_and_binarises_noisy_masks(reloblur_tree):
  root, truth = reloblur_tree
  for split in ('train', 'test'):
    src = readers.ReLoBlurSource(root, split)
    assert src.names == sorted(truth[split])
    for i, name in enumerate(src.names):
      sample = src[i]
      assert sample['name'] == name
      assert_sample(sample, *truth[split][name])


def test_reloblur_reports_empty_masks(reloblur_tree, caplog):
  root, truth = reloblur_tree
  src = readers.ReLoBlurSource(root, 'test')
  empty = [n for n, (_, _, m) in truth['test'].items() if not m.any()]
  assert src.empty_masks() == empty and len(empty) == 1
  with caplog.at_level(logging.WARNING):
    src.example(src.names.index(empty[0]))
  assert 'Empty blur mask' in caplog.text and empty[0].split('/')[-1] in caplog.text


def test_reloblur_errors(tmp_path, reloblur_tree):
  root, truth = reloblur_tree
  with pytest.raises(FileNotFoundError, match='dataset/train'):
    readers.ReLoBlurSource(tmp_path / 'nowhere', 'train')
  name = sorted(truth['train'])[0]
  scene_seq, idx = name.rsplit('/', 1)
  (root / 'masks' / 'train' / scene_seq / f'{idx}.png').unlink()
  with pytest.raises(DataError, match='without a mask.*' + idx):
    readers.ReLoBlurSource(root, 'train')
  (root / 'dataset' / 'test' / scene_seq / f'{idx}_blur.png').unlink()
  with pytest.raises(DataError, match='without a _blur.png'):
    readers.ReLoBlurSource(root, 'test')


def test_size_mismatch_and_unreadable_files(tmp_path):
  root = tmp_path / 'R'
  truth = build_reloblur(root, counts={'train': 2})
  first, second = sorted(truth['train'])
  bad = root / 'dataset' / 'train' / (first + '_blur.png')
  save(bad, np.zeros((10, 10, 3), np.uint8))
  src = readers.ReLoBlurSource(root, 'train')
  with pytest.raises(DataError, match='Size mismatch.*blur 10x10'):
    src.example(0)
  with pytest.raises(DataError, match='Size mismatch'):
    src.check_sizes()
  (root / 'dataset' / 'train' / (second + '_sharp.png')).write_bytes(b'not a png')
  with pytest.raises(DataError, match='Cannot read image .*_sharp.png'):
    src.example(1)


def test_npy_dense_and_sparse_masks(npy_folder):
  root, truth = npy_folder
  src = readers.NpySource(root)
  assert len(src) == 3 and src.names == sorted(truth)
  for i, name in enumerate(src.names):
    assert_sample(src[i], *truth[name])


def test_npy_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    readers.NpySource(tmp_path / 'missing')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match='No .npy'):
    readers.NpySource(tmp_path / 'empty')
  bad = tmp_path / 'bad'
  bad.mkdir()
  np.save(bad / 'x.npy', {'img_blur': np.zeros((4, 4, 3), np.uint8)}, allow_pickle=True)
  with pytest.raises(DataError, match='img_gt'):
    readers.NpySource(bad).example(0)
  np.save(
    bad / 'x.npy',
    {
      'img_blur': np.zeros((4, 4, 3), np.uint8),
      'img_gt': np.zeros((4, 5, 3), np.uint8),
      'blur_mask': np.zeros((4, 4)),
    },
    allow_pickle=True,
  )
  with pytest.raises(DataError, match='Size mismatch'):
    readers.NpySource(bad).example(0)
  (bad / 'x.npy').write_bytes(b'garbage')
  with pytest.raises(DataError, match='Cannot read'):
    readers.NpySource(bad).example(0)


def test_gopro_sequences_blur_or_blur_gamma(tmp_path):
  truth = build_gopro(tmp_path)
  for blur, column in (('blur', 0), ('blur_gamma', 1)):
    src = readers.GoProSource(tmp_path, 'test', blur=blur)
    assert src.names == sorted(truth['test'])
    for i, name in enumerate(src.names):
      frames = truth['test'][name]
      assert_sample(src[i], frames[column], frames[2], np.ones(frames[2].shape[:2], bool))
  # The manual dir may also be GOPRO_Large itself.
  assert len(readers.GoProSource(tmp_path / 'GOPRO_Large', 'train')) == 4


def test_gopro_flat_input_target_layout(tmp_path):
  truth = build_gopro(tmp_path / 'Datasets', layout='flat')
  src = readers.GoProSource(tmp_path / 'Datasets', 'train')
  assert src.names == sorted(truth['train'])
  blur, _, sharp = truth['train'][src.names[1]]
  assert_sample(src[1], blur, sharp, np.ones(sharp.shape[:2], bool))
  # A single split folder with input/ and target/ works too.
  assert len(readers.GoProSource(tmp_path / 'Datasets' / 'test' / 'GoPro', 'test')) == 2


def test_gopro_errors(tmp_path):
  build_gopro(tmp_path, splits=('train',))
  with pytest.raises(FileNotFoundError, match='GoPro test split'):
    readers.GoProSource(tmp_path, 'test')
  (tmp_path / 'GOPRO_Large' / 'train' / 'GOPR00' / 'sharp' / '000001.png').unlink()
  with pytest.raises(DataError, match='without a sharp image.*000001'):
    readers.GoProSource(tmp_path, 'train')
  with pytest.raises(ValueError, match='blur_gamma'):
    readers.GoProSource(tmp_path, 'train', blur='gamma')


def test_pairs_with_and_without_masks(tmp_path):
  rng = np.random.default_rng(0)
  blur, sharp = (rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(2))
  mask = np.zeros((12, 16), bool)
  mask[3:7, 2:9] = True
  save(tmp_path / 'p' / 'blur' / 'a' / 'x.png', blur)
  save(tmp_path / 'p' / 'sharp' / 'a' / 'x.bmp', sharp)  # Suffixes may differ.
  src = readers.PairsSource(tmp_path / 'p')
  assert src.names == ['a/x']
  assert_sample(src[0], blur, sharp, np.ones_like(mask))
  save(tmp_path / 'p' / 'mask' / 'a' / 'x.png', mask.astype(np.uint8) * 255)
  assert_sample(readers.PairsSource(tmp_path / 'p')[0], blur, sharp, mask)
  save(tmp_path / 'p' / 'blur' / 'b.png', blur)
  with pytest.raises(DataError, match='without a sharp image.*b'):
    readers.PairsSource(tmp_path / 'p')
  with pytest.raises(FileNotFoundError, match='blur/, sharp/'):
    readers.PairsSource(tmp_path / 'p' / 'blur')


def test_open_source_parses_every_kind(tmp_path, reloblur_tree):
  root, truth = reloblur_tree
  build_npy(tmp_path / 'npy', n=2)
  build_gopro(tmp_path / 'gopro')
  assert len(specs.open_source(f'npy:{tmp_path}/npy')) == 2
  assert len(specs.open_source(f'reloblur:{root}')) == len(truth['test'])
  assert len(specs.open_source(f'reloblur:{root}?split=train')) == len(truth['train'])
  assert len(specs.open_source(f'reloblur:{root}', split='train')) == len(truth['train'])
  gamma = specs.open_source(f'gopro:{tmp_path}/gopro?blur=blur_gamma')
  assert isinstance(gamma, readers.GoProSource) and 'blur_gamma' in gamma.description
  syn = specs.open_source('synthetic?count=3&size=48&seed=2')
  assert len(syn) == 3 and syn[2]['blur'].shape == (48, 48, 3) and syn.split == 'test'
  assert specs.open_source('synthetic').size == (256, 256)
  short = specs.open_source('synthetic?min_blur=2&max_blur=6.5')
  assert short.settings.blur_length == (2.0, 6.5)
  assert specs.open_source('synthetic?max_blur=9').settings.blur_length[1] == 9.0
  # Realistic blur by default; the earlier extreme setting is a preset.
  assert specs.open_source('synthetic').settings.blur_length == (2.0, 12.0)
  extreme = specs.open_source('synthetic?preset=extreme&max_blur=40')
  assert extreme.settings.blur_length == (8.0, 40.0) and extreme.settings.texture_tries == 1
  wide = specs.open_source('synthetic?size=96x64&count=1')
  assert wide.size == (64, 96) and wide[0]['blur'].shape == (64, 96, 3)
  val = specs.open_source('synthetic?size=32&count=1&split=val')
  assert val.split == 'val' and val[0]['blur'].shape == (32, 32, 3)


@pytest.mark.parametrize(
  'spec, message',
  [
    ('relobur:/x', "Did you mean 'reloblur'"),
    ('npy', 'needs a path'),
    ('synthetic:/x', 'takes no path'),
    ('synthetic?cout=3', r"Unknown option\(s\) \['cout'\]"),
    ('synthetic?count=many', 'not a valid int'),
    ('synthetic?min_blur=9&max_blur=4', 'min_blur <= max_blur'),
    ('synthetic?max_blur=-1', 'min_blur <= max_blur'),
    ('gopro:/x?split=val', 'split must be train or test'),
    ('synthetic?split=valid', 'split must be one of'),
    ('pairs:/x?threshold', 'Malformed options'),
    ('synthetic?preset=wild', "Unknown preset 'wild'"),
    ('synthetic?size=3x4x5', 'not S or WxH'),
  ],
)
def test_open_source_rejects_typos(spec, message):
  with pytest.raises(ValueError, match=message):
    specs.open_source(spec)


def test_open_source_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match='pairs folder'):
    specs.open_source(f'pairs:{tmp_path}/nothing')
