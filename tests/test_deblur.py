"""The deblurring command: real photographs, image formats, broken files, atomic writes."""

from pathlib import Path
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from lmdvit_jax import deblur, image_io
from lmdvit_jax.data import DataError
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import LMDViT, init_params
from tests.helpers import REPO, TINY

REAL = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'real'


def _png_header(path):
  """(bit depth, colour type) from the IHDR chunk."""
  head = Path(path).read_bytes()[:26]
  return head[24], head[25]


# ---------------------------------------------------------------------------
# Model-free parts.


def test_encode_png16_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 65536, (5, 7, 1), dtype=np.uint16)
  (tmp_path / 'g.png').write_bytes(image_io.encode_png16(grey))
  with Image.open(tmp_path / 'g.png') as im:
    np.testing.assert_array_equal(np.asarray(im), grey[..., 0])
  rgb = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
  (tmp_path / 'c.png').write_bytes(image_io.encode_png16(rgb))
  assert _png_header(tmp_path / 'c.png') == (16, 2)
  with Image.open(tmp_path / 'c.png') as im:  # Pillow decodes it to 8 bits
    assert im.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(im), (rgb >> 8).astype(np.uint8))
  with pytest.raises(ValueError):
    image_io.encode_png16(rgb.astype(np.uint8))


def test_read_image_modes(tmp_path):
  a16 = np.array([[0, 65535], [257, 32768]], np.uint16)
  Image.fromarray(a16).save(tmp_path / 'g16.png')
  loaded = image_io.read_image(tmp_path / 'g16.png')
  assert loaded.grey and loaded.bits == 16 and loaded.alpha is None
  np.testing.assert_allclose(loaded.rgb[..., 1], a16 / 65535, atol=1e-7)
  pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), 'P')
  pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
  pal.save(tmp_path / 'p.png')
  loaded = image_io.read_image(tmp_path / 'p.png')
  assert not loaded.grey and loaded.bits == 8 and loaded.alpha is None
  np.testing.assert_array_equal(loaded.rgb[1, 0], [0, 0, 1])
  with pytest.raises(DataError, match='t.png'):
    (tmp_path / 't.png').write_text('not an image')
    image_io.read_image(tmp_path / 't.png')


def test_collect_inputs_mirrors_paths_and_flags_clashes(tmp_path):
  (tmp_path / 'in' / 'sub').mkdir(parents=True)
  for name in ('a.png', 'a.jpg', 'sub/b.JPEG', 'notes.txt', 'out/old.png'):
    (tmp_path / 'in' / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / 'in' / name).write_bytes(b'x')
  jobs, errors = deblur.collect_inputs(
    [str(tmp_path / 'in'), str(tmp_path / 'in' / 'sub' / 'b.JPEG'), str(tmp_path / 'nope')],
    exclude=(tmp_path / 'in' / 'out').resolve(),
  )
  assert [rel.as_posix() for _, rel in jobs] == ['a.png', 'sub/b.png', 'b.png']
  assert len(errors) == 2  # a.png vs a.jpg clash, missing input
  assert any('a.png' in e and 'already' in e for e in errors)
  assert any('nope' in e for e in errors)


# ---------------------------------------------------------------------------
# With the model.


@pytest.mark.skipif(not REAL.is_dir(), reason=f'real photographs not found at {REAL}')
def test_real_photographs(checkpoint, tmp_path, capsys):
  out = tmp_path / 'out'
  assert (
    deblur.run(
      str(checkpoint), [str(REAL)], str(out), InferenceSettings(capacity='masked'), progress=False
    )
    == 0
  )
  inputs = sorted(REAL.glob('*.png'))
  assert len(inputs) == 4
  for src in inputs:
    with Image.open(src) as a, Image.open(out / src.name) as b:
      assert b.size == a.size == (1280, 720) and b.mode == 'RGB'
      before, after = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.all(np.isfinite(after))
    assert np.abs(after - before).mean() > 0.5  # the random model did change it
  assert 'Deblurred 4 of 4 images' in capsys.readouterr().out


def _write_inputs(folder):
  """Small inputs of every kind (all pad to 128 x 128), two of them broken."""
  rng = np.random.default_rng(0)
  (folder / 'nested').mkdir(parents=True)
  rgb = rng.integers(0, 256, (90, 110, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(folder / 'rgb.jpg', quality=90)
  Image.fromarray(rgb[..., 0]).save(folder / 'grey8.png')
  Image.fromarray(rng.integers(0, 65536, (90, 110), dtype=np.uint16)).save(folder / 'grey16.png')
  (folder / 'rgb16.png').write_bytes(
    image_io.encode_png16(rng.integers(0, 65536, (64, 80, 3), dtype=np.uint16))
  )
  alpha = rng.integers(0, 256, (90, 110, 1), dtype=np.uint8)
  Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(folder / 'nested' / 'rgba.png')
  Image.fromarray(rgb).convert('P', palette=Image.Palette.ADAPTIVE).save(folder / 'pal.png')
  pal = Image.fromarray(rgb).convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
  pal.save(folder / 'pal_transparent.png', transparency=0)
  # Truncated PNG and a text file with an image suffix.
  Image.fromarray(rgb).save(folder / 'full.png')
  data = (folder / 'full.png').read_bytes()
  (folder / 'full.png').unlink()
  (folder / 'truncated.png').write_bytes(data[: len(data) // 2])
  (folder / 'notes.png').write_text('this is not an image\n')
  return alpha[..., 0]


def test_formats_and_broken_files(checkpoint, tmp_path, capsys):
  alpha = _write_inputs(tmp_path / 'in')
  out = tmp_path / 'out'
  status = deblur.run(
    str(checkpoint),
    [str(tmp_path / 'in')],
    str(out),
    InferenceSettings(capacity='masked'),
    overlays=True,
    progress=False,
  )
  assert status == 1  # two files failed, the others were written
  err = capsys.readouterr().err
  assert 'truncated.png' in err and 'notes.png' in err
  assert not (out / 'truncated.png').exists() and not (out / 'notes.png').exists()
  expect = {  # name: (mode, size)
    'rgb.png': ('RGB', (110, 90)),
    'grey8.png': ('L', (110, 90)),
    'grey16.png': ('I;16', (110, 90)),
    'rgb16.png': ('RGB', (80, 64)),
    'nested/rgba.png': ('RGBA', (110, 90)),
    'pal.png': ('RGB', (110, 90)),
    'pal_transparent.png': ('RGBA', (110, 90)),
  }
  for name, (mode, size) in expect.items():
    with Image.open(out / name) as im:
      assert (im.mode, im.size) == (mode, size), name
  assert _png_header(out / 'grey16.png') == (16, 0)
  assert _png_header(out / 'rgb16.png') == (16, 2)
  with Image.open(out / 'nested' / 'rgba.png') as im:
    np.testing.assert_array_equal(np.asarray(im)[..., 3], alpha)  # alpha put back as it was
  with Image.open(out / 'grey16.png') as im:
    assert np.asarray(im).dtype == np.uint16
  assert (out / 'nested' / 'rgba.decisions.png').is_file()
  assert not list(out.rglob('*.tmp'))


def test_cli_exit_status(checkpoint, tmp_path):
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'lmdvit_jax.deblur',
      f'--checkpoint={checkpoint}',
      str(bad),
      str(tmp_path / 'missing.png'),
      f'--output={tmp_path / "out"}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert run.returncode == 1
  assert 'bad.png' in run.stderr and 'missing.png' in run.stderr
  assert not (tmp_path / 'out' / 'bad.png').exists()


# ---------------------------------------------------------------------------
# Nothing lost: inputs never overwritten, bad images named and skipped.


def test_refuses_to_write_over_its_inputs_before_any_work(checkpoint, tmp_path, capsys):
  photos = tmp_path / 'photos'
  photos.mkdir()
  original = np.random.default_rng(0).integers(0, 256, (64, 80, 3), np.uint8)
  Image.fromarray(original).save(photos / 'one.png')
  status = deblur.run(
    str(tmp_path / 'no_checkpoint_needed'), [str(photos / 'one.png')], str(photos), progress=False
  )
  assert status == 2
  assert 'refusing to write over input files' in capsys.readouterr().err
  with Image.open(photos / 'one.png') as im:
    np.testing.assert_array_equal(np.asarray(im), original)
  # The overlay of another input would land on an input too.
  Image.fromarray(original).save(photos / 'two.decisions.png')
  Image.fromarray(original).save(photos / 'two.jpg')
  clash = deblur.overwrites(
    [
      (photos / 'two.jpg', Path('two.png')),
      (photos / 'two.decisions.png', Path('two.decisions.png')),
    ],
    photos,
    overlays=True,
  )
  assert any('two.decisions.png' in c for c in clash)
  # An existing file as --output: one line, nothing run.
  status = deblur.run(
    str(checkpoint), [str(photos / 'one.png')], str(photos / 'one.png'), progress=False
  )
  assert status == 2 and 'is an existing file' in capsys.readouterr().err


def test_non_finite_and_multi_frame_images_are_named_and_skipped(checkpoint, tmp_path, capsys):
  inputs = tmp_path / 'in'
  inputs.mkdir()
  field = np.random.default_rng(0).uniform(size=(64, 64)).astype(np.float32)
  field[10, 20] = np.nan
  Image.fromarray(field, mode='F').save(inputs / 'nan.tiff')
  frames = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (0, 128, 255)]
  frames[0].save(tmp_path / 'anim.gif', save_all=True, append_images=frames[1:])
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(inputs / 'good.png')
  out = tmp_path / 'out'
  status = deblur.run(
    str(checkpoint),
    [str(inputs), str(tmp_path / 'anim.gif')],
    str(out),
    InferenceSettings(capacity='masked'),
    progress=False,
  )
  err = capsys.readouterr().err
  assert status == 1
  assert 'nan.tiff' in err and 'NaN' in err and 'anim.gif' in err and '3 frames' in err
  assert sorted(p.name for p in out.iterdir()) == ['good.png']
  # Through the Python API: a ValueError, not a wrecked output.
  deblurrer = deblur.Deblurrer(LMDViT(**TINY), init_params(LMDViT(**TINY), 0))
  bad = np.zeros((64, 64, 3), np.float32)
  bad[0, 0, 0] = np.inf
  with pytest.raises(ValueError, match='non-finite'):
    deblurrer(bad)


# ---------------------------------------------------------------------------
# Tiles, and what they get wrong.


def test_tiled_photo_matches_whole_and_keeps_its_overlays(checkpoint, tmp_path):
  photos = tmp_path / 'in'
  photos.mkdir()
  rgb = np.random.default_rng(3).integers(0, 256, (200, 300, 3), np.uint8)  # pads to 256 x 384
  Image.fromarray(rgb).save(photos / 'wide.png')
  outs = {}
  for tile in (0, 256):
    out = tmp_path / f'out{tile}'
    assert (
      deblur.run(
        str(checkpoint),
        [str(photos)],
        str(out),
        InferenceSettings(capacity='masked', tile=tile, tile_overlap=128),
        overlays=True,
        progress=False,
      )
      == 0
    )
    with Image.open(out / 'wide.png') as im:
      outs[tile] = np.asarray(im, np.float64) / 255
    assert (out / 'wide.decisions.png').is_file()
  mse = np.mean((outs[0] - outs[256]) ** 2)
  assert mse == 0 or 10 * np.log10(1 / mse) > 40


def test_bad_tile_flags_and_an_output_that_is_the_input_folder_stop_before_work(
  checkpoint, tmp_path, capsys
):
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / 'one.png')
  assert (
    deblur.run(
      str(checkpoint),
      [str(photos)],
      str(tmp_path / 'o'),
      InferenceSettings(tile=200),
      progress=False,
    )
    == 2
  )
  err = capsys.readouterr().err
  assert 'tile must be a multiple of the model' in err and len(err.strip().splitlines()) == 1
  assert deblur.run(str(checkpoint), [str(photos)], str(photos), progress=False) == 2
  err = capsys.readouterr().err
  assert 'is the input folder' in err and 'no image files' not in err


def test_out_of_memory_on_one_photo_names_it_and_the_rest_are_written(
  checkpoint, tmp_path, capsys, monkeypatch
):
  from lmdvit_jax.errors import OutOfMemoryError

  photos = tmp_path / 'in'
  photos.mkdir()
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / 'small.png')
  Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(photos / 'large.png')
  real_call = deblur.Deblurrer.__call__

  def call(self, image):
    if image.shape[0] > 100:
      raise OutOfMemoryError(
        'out of memory deblurring 1 image(s) of 200x200: use a smaller --tile or --max_memory'
      )
    return real_call(self, image)

  monkeypatch.setattr(deblur.Deblurrer, '__call__', call)
  out = tmp_path / 'out'
  assert (
    deblur.run(
      str(checkpoint), [str(photos)], str(out), InferenceSettings(capacity='masked'), progress=False
    )
    == 1
  )
  err = capsys.readouterr().err
  assert 'large.png' in err and 'smaller --tile' in err and 'Traceback' not in err
  assert (out / 'small.png').is_file() and not (out / 'large.png').exists()
  assert not list(out.glob('.*.tmp'))


# ---------------------------------------------------------------------------
# Every shape, every depth, and nothing made by a refused command.


def test_sixteen_bit_colour_keeps_sixteen_bits(tmp_path):
  rng = np.random.default_rng(1)
  for channels in (3, 4):
    a = rng.integers(0, 65536, (6, 9, channels), dtype=np.uint16)
    (tmp_path / f'c{channels}.png').write_bytes(image_io.encode_png16(a))
    import tifffile

    tifffile.imwrite(tmp_path / f'c{channels}.tif', a)
    for name in (f'c{channels}.png', f'c{channels}.tif'):
      loaded = image_io.read_image(tmp_path / name)
      assert loaded.bits == 16 and not loaded.grey, name
      np.testing.assert_array_equal(np.round(loaded.rgb * 65535).astype(np.uint16), a[..., :3])
      if channels == 4:
        np.testing.assert_array_equal(np.round(loaded.alpha * 65535).astype(np.uint16), a[..., 3])
      # Written back: 16 bits, the same values.
      out = image_io.encode_result(loaded.rgb, loaded)
      assert out[24] == 16 and out[25] == (6 if channels == 4 else 2)


def test_float_values_outside_the_unit_range_are_clipped_with_a_warning(tmp_path, caplog):
  field = np.linspace(-0.5, 3.0, 64 * 64, dtype=np.float32).reshape(64, 64)
  Image.fromarray(field, mode='F').save(tmp_path / 'hdr.tiff')
  with caplog.at_level('WARNING'):
    loaded = image_io.read_image(tmp_path / 'hdr.tiff')
  assert loaded.rgb.min() == 0 and loaded.rgb.max() == 1
  assert any(
    'hdr.tiff' in r.getMessage() and 'clipped' in r.getMessage() and '3' in r.getMessage()
    for r in caplog.records
  )


def test_long_thin_photos_deblur_within_the_budget(checkpoint, tmp_path, capsys):
  photos = tmp_path / 'in'
  photos.mkdir()
  rng = np.random.default_rng(2)
  Image.fromarray(rng.integers(0, 256, (900, 20, 3), np.uint8)).save(photos / 'tall.png')
  Image.fromarray(rng.integers(0, 256, (20, 900, 3), np.uint8)).save(photos / 'wide.png')
  Image.fromarray(rng.integers(0, 256, (1, 1, 3), np.uint8)).save(photos / 'dot.png')
  out = tmp_path / 'out'
  # A budget of a few grid cells: the long side must be split, the short one cannot be.
  assert (
    deblur.run(
      str(checkpoint),
      [str(photos)],
      str(out),
      InferenceSettings(capacity='masked', max_memory=64 * 2**20),
      progress=False,
    )
    == 0
  ), capsys.readouterr().err
  printed = capsys.readouterr().out
  assert 'ran as tiles' in printed
  for name, shape in (('tall', (900, 20, 3)), ('wide', (20, 900, 3)), ('dot', (1, 1, 3))):
    with Image.open(out / f'{name}.png') as im:
      assert np.asarray(im).shape == shape
  # Compilation and the per-image compute time are both said.
  assert 's per image computing' in printed and 's per image in all' in printed


def test_a_budget_nothing_fits_in_stops_before_work_and_creates_nothing(
  checkpoint, tmp_path, capsys
):
  photos = tmp_path / 'in'
  photos.mkdir()
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / 'one.png')
  out = tmp_path / 'out' / 'nested'
  assert (
    deblur.run(
      str(checkpoint), [str(photos)], str(out), InferenceSettings(max_memory=1024), progress=False
    )
    == 2
  )
  err = capsys.readouterr().err
  assert 'max_memory (1.0 KiB) is less than the params alone' in err
  assert len(err.strip().splitlines()) == 1
  assert not (tmp_path / 'out').exists()
  # Above the params, below the smallest canvas: also before any image.
  assert (
    deblur.run(
      str(checkpoint),
      [str(photos)],
      str(out),
      InferenceSettings(max_memory=4 * 2**20),
      progress=False,
    )
    == 2
  )
  assert 'smallest canvas' in capsys.readouterr().err
  with pytest.raises(ValueError, match='capacity'):  # Refused where the settings are made.
    InferenceSettings(capacity='1.5')
  assert not (tmp_path / 'out').exists()
