"""The frame cache (`cache=DIR`): the PNG path's batches bit for bit, exact
resume, interrupted builds, changed sources, other formats, a full disk."""

import errno
import os
import pickle

import numpy as np
import pytest

from lmdvit_jax import files
from lmdvit_jax.data import build, cache, crops, open_source, pipeline
from lmdvit_jax.data.examples import DataError

from .builders import build_gopro, build_reloblur, make_triple, save

KEYS = ('blur', 'sharp', 'mask')


def reloblur(tmp_path, n=4, size=(40, 56)):
  root = tmp_path / 'ReLoBlur'
  build_reloblur(root, counts={'train': n}, size=size)
  return f'reloblur:{root}', tmp_path / 'cache'


def batches(spec, n=3, **kwargs):
  options = dict(patch_size=24, batch_size=4, seed=7, num_threads=2)
  options.update(kwargs)
  it = pipeline.make_train_iterator([spec], **options)
  return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]


def assert_same_batches(got, want):
  for g, w in zip(got, want, strict=True):
    for key in KEYS:
      np.testing.assert_array_equal(g[key], w[key])
      assert g[key].dtype == w[key].dtype == np.float32


@pytest.mark.parametrize('layout', ['reloblur', 'gopro', 'pairs'])
def test_batches_equal_the_png_path_bit_for_bit(tmp_path, layout):
  if layout == 'reloblur':
    spec, where = reloblur(tmp_path)
  elif layout == 'gopro':
    build_gopro(tmp_path / 'GoPro', splits=('train',), size=(32, 40))
    spec, where = f'gopro:{tmp_path / "GoPro"}', tmp_path / 'cache'
  else:
    rng = np.random.default_rng(0)
    for i in range(3):
      blur, sharp, mask = make_triple(rng, 36, 30, (3, 20, 2, 9 + i))
      save(tmp_path / 'p' / 'blur' / f'{i}.png', blur)
      save(tmp_path / 'p' / 'sharp' / f'{i}.png', sharp)
      save(tmp_path / 'p' / 'mask' / f'{i}.png', mask.astype(np.uint8) * 255)
    spec, where = f'pairs:{tmp_path / "p"}', tmp_path / 'cache'
  want = batches(spec, n=4)
  cached = f'{spec}?cache={where}'
  assert_same_batches(batches(cached, n=4), want)  # Filled on first read...
  assert len(list(where.rglob('*.frame'))) == len(open_source(spec, 'train'))
  assert_same_batches(batches(cached, n=4), want)  # ... and read back.
  assert_same_batches(
    batches(cached, n=4, num_threads=1, blur_prob=1.0),
    batches(spec, n=4, num_threads=1, blur_prob=1.0),
  )


def test_the_draw_from_mask_runs_is_the_draw_from_the_mask():
  """Same corner and the same use of the generator, on masks of every kind."""
  g = np.random.default_rng(1)
  for t in range(400):
    h, w = (int(v) for v in g.integers(4, 30, 2))
    patch = int(g.integers(1, min(h, w) + 1))
    mask = [
      (g.random((h, w)) < g.random() * 0.3),
      np.zeros((h, w)),
      np.ones((h, w)),
      np.pad(np.ones((2, w)), ((0, h - 2), (0, 0))),
    ][t % 4].astype(np.uint8)[..., None]
    runs = crops.mask_runs(mask)
    for blur_prob in (0.5, 1.0):
      seed = int(g.integers(1 << 30))
      a, b = np.random.default_rng(seed), np.random.default_rng(seed)
      assert crops.crop_origin(a, mask, patch, blur_prob) == crops.crop_origin(
        b, mask, patch, blur_prob, runs
      )
      assert a.random() == b.random()


def test_resume_is_exact_from_the_cache(tmp_path):
  spec, where = reloblur(tmp_path)
  cached = f'{spec}?cache={where}'
  kwargs = dict(patch_size=24, batch_size=4, seed=3, num_threads=2)
  it = pipeline.make_train_iterator([cached], **kwargs)
  for _ in range(2):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = pipeline.make_train_iterator([cached], **kwargs)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in KEYS:
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_build_prints_the_space_first_and_a_killed_build_resumes(tmp_path, capsys, monkeypatch):
  spec, where = reloblur(tmp_path, n=5)
  cached = f'{spec}?cache={where}'
  source = open_source(cached, 'train', verify_cache=False)
  real_write = files.write_bytes_atomic
  written = []

  def dies_in_the_third_frame(path, data):
    if len(written) == 2:  # Half a file written, then the process is gone (kill -9) ...
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.parent / f'.{path.name}.killed{files.TEMP_SUFFIX}'
      tmp.write_bytes(b'half a frame')
      os.utime(tmp, (1, 1))
      raise KeyboardInterrupt
    if len(written) == 1:  # ... or stopped by Ctrl-C in the middle of a write.
      written.append(path)

      def stopped():
        yield data[0]
        raise KeyboardInterrupt

      with pytest.raises(KeyboardInterrupt):
        real_write(path, stopped())
      return
    written.append(path)
    real_write(path, data)

  monkeypatch.setattr(files, 'write_bytes_atomic', dies_in_the_third_frame)
  with pytest.raises(KeyboardInterrupt):
    cache.build(source, jobs=1, progress=False)
  monkeypatch.setattr(files, 'write_bytes_atomic', real_write)
  assert len(list(where.rglob('*.frame'))) == 1  # No half frame under a frame's name.
  assert cache.CachedSource(
    source.source, where, 'reloblur-train', source.identity, source.spec
  ).missing  # Opens: the rest is decoded on read.
  capsys.readouterr()
  result = build.build_cache(cached, jobs=2)
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith('ReLoBlur train at') and '4 to decode' in out[0] and 'GB free' in out[0]
  assert result['decoded'] == 4 and result['frames'] == 5
  assert not list(where.rglob(f'*{files.TEMP_SUFFIX}'))  # The killed writer's file is gone.
  assert build.build_cache(cached)['decoded'] == 0
  assert_same_batches(batches(cached), batches(spec))


def test_a_changed_source_file_is_named_and_refreshed(tmp_path):
  spec, where = reloblur(tmp_path)
  cached = f'{spec}?cache={where}'
  build.build_cache(cached)
  blur_file = sorted((tmp_path / 'ReLoBlur' / 'dataset').rglob('*_blur.png'))[1]
  save(blur_file, np.zeros((40, 56, 3), np.uint8))
  with pytest.raises(
    DataError,
    match=f"{blur_file} changed since it was decoded.*"
    r"python -m lmdvit_jax.data.build '.*cache=",
  ):
    open_source(cached, 'train')
  assert build.build_cache(cached)['decoded'] == 1
  source = open_source(cached, 'train')
  i = [t[1] for t in source.source.triples].index(blur_file)
  assert source.example(i)['blur'].max() == 0
  assert_same_batches(batches(cached), batches(spec))


def test_damaged_frames_and_other_formats_are_refused_with_the_command(tmp_path):
  spec, where = reloblur(tmp_path)
  cached = f'{spec}?cache={where}'
  build.build_cache(cached)
  frame = sorted(where.rglob('*.frame'))[0]
  frame.write_bytes(frame.read_bytes()[:-100])
  with pytest.raises(DataError, match='cut short.*python -m lmdvit_jax.data.build'):
    open_source(cached, 'train')
  assert build.build_cache(cached)['decoded'] == 1
  record = next(where.rglob('source.json'))
  record.write_text('{"format": 0}')
  with pytest.raises(DataError, match=r"format 0; this version reads format 1.*--overwrite"):
    open_source(cached, 'train')
  with pytest.raises(DataError, match='format 0'):
    build.build_cache(cached)
  assert build.build_cache(cached, overwrite=True)['decoded'] == 4
  assert_same_batches(batches(cached), batches(spec))


def test_a_full_disk_is_one_line_naming_the_folder(tmp_path, monkeypatch):
  spec, where = reloblur(tmp_path)
  cached = f'{spec}?cache={where}'

  def full(path, data):
    raise OSError(errno.ENOSPC, 'No space left on device')

  source = open_source(cached, 'train')
  monkeypatch.setattr(files, 'write_bytes_atomic', full)
  with pytest.raises(DataError, match=f'No space left for the frame cache in {where}'):
    source.example(0)
  monkeypatch.setattr(cache.shutil, 'disk_usage', lambda p: type('U', (), {'free': 1000})())
  with pytest.raises(
    DataError, match=f'Not enough space for the frame cache in {where}.*needed, 0.00 GB free'
  ):
    build.build_cache(cached)


def test_memory_stays_bounded_and_the_source_pickles(tmp_path, monkeypatch):
  spec, where = reloblur(tmp_path, n=5)
  source = open_source(f'{spec}?cache={where}', 'train')
  monkeypatch.setattr(cache, 'OPEN_FRAMES', 2)
  for i in range(5):
    example = source.example(i)
    assert isinstance(example['blur'], np.memmap) or isinstance(example['blur'].base, np.memmap)
  assert len(source._maps) == 2
  copy = pickle.loads(pickle.dumps(source))
  for key in KEYS:
    np.testing.assert_array_equal(copy.example(3)[key], source.example(3)[key])
  np.testing.assert_array_equal(copy[3]['blur'], open_source(spec, 'train')[3]['blur'])


def test_specs_take_cache_only_where_frames_are_files(tmp_path):
  spec, _ = reloblur(tmp_path)
  with pytest.raises(ValueError, match='cache= needs a folder'):
    open_source(f'{spec}?cache=', 'train')
  with pytest.raises(ValueError, match=r"Unknown option\(s\) \['cache'\] for 'synthetic'"):
    open_source(f'synthetic?cache={tmp_path}')
  with pytest.raises(ValueError, match='has no cache=DIR'):
    build.build_cache(spec)
