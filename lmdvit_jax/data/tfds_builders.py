"""TFDS builders `reloblur`, `gopro` and `synthetic_local_blur`, without TensorFlow.

Examples: `blur`, `sharp` uint8 [H, W, 3], `mask` uint8 [H, W, 1] in {0, 1}
(PNG-encoded, so lossless) and `name`. Splits `train` and `test`. Written as
array_record and read with `as_data_source` (random access, no TensorFlow):

    python -m lmdvit_jax.data.build reloblur --manual_dir=/data/ReLoBlur
    python -m lmdvit_jax.data.build gopro --manual_dir=/data/GoPro
    python -m lmdvit_jax.data.build synthetic_local_blur

    import lmdvit_jax.data, tensorflow_datasets as tfds
    test = tfds.data_source('reloblur', split='test')  # test[0]['blur'] ...

TFDS encodes images with TensorFlow when given arrays, so the builders hand it
PNG bytes made with PIL (or the original PNG file when it is already 8-bit RGB).
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from lmdvit_jax import image_io
from lmdvit_jax.data import readers
from lmdvit_jax.data.examples import DataError, Example, Source

log = logging.getLogger(__name__)

SPLITS = ('train', 'test')


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      'blur': tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format='png'),
      'sharp': tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format='png'),
      'mask': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format='png'),
      'name': tfds.features.Text(),
    }
  )


def _is_rgb_png(path: Path) -> bool:
  with Image.open(path) as image:
    return image.format == 'PNG' and image.mode == 'RGB'


def _encoded(example: Example, files: tuple[Path | None, Path | None] = (None, None)) -> dict:
  """PNG bytes for each image; an 8-bit RGB PNG file is stored as it is."""
  out = {'name': example['name'], 'mask': image_io.encode_png(example['mask'])}
  for key, path in zip(('blur', 'sharp'), files):
    out[key] = (
      path.read_bytes()
      if path is not None and _is_rgb_png(path)
      else image_io.encode_png(example[key])
    )
  return out


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
  """Shared parts: features, example generation from a `Source`, manual dir."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=_features(),
      supervised_keys=('blur', 'sharp'),
    )

  def _manual_root(self, dl_manager) -> Path:
    try:
      root = Path(os.fspath(dl_manager.manual_dir))
    except AssertionError as e:  # No manual_dir given; the message has the instructions.
      raise FileNotFoundError(str(e)) from None
    if not root.is_dir():
      raise FileNotFoundError(
        f'Manual dir {root} does not exist.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    return root

  def _available_splits(self, make_source) -> dict:
    """{split: examples} for the splits on disk (at least one)."""
    sources, missing = {}, []
    for split in SPLITS:
      try:
        sources[split] = make_source(split)
      except FileNotFoundError as e:
        missing.append(str(e))
    if not sources:
      raise FileNotFoundError('\n'.join(missing) + f'\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    for message in missing:
      log.warning('Skipping a split: %s', message)
    return {split: self._generate_examples(src) for split, src in sources.items()}

  def _generate_examples(self, source: Source) -> Iterator[tuple[str, dict]]:
    empty = []
    for i in range(len(source)):
      example = source.example(i)  # Decodes and checks sizes: bad files fail here.
      if not example['mask'].any():
        empty.append(example['name'])
      files = (
        source.triples[i][1:3] if isinstance(source, readers.FileTriplesSource) else (None, None)
      )
      yield example['name'], _encoded(example, files)
    if empty:
      log.warning(
        '%d of %d examples have an empty blur mask: %s',
        len(empty),
        len(source),
        ', '.join(empty[:20]) + (' ...' if len(empty) > 20 else ''),
      )


class Reloblur(_Builder):
  """ReLoBlur (Li et al., AAAI 2023): real local motion blur, 2152x1436, with the
  LMD-ViT blur masks. Academic use only."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
ReLoBlur cannot be downloaded automatically (academic use only). Get the train
and test images from the ReLoBlur project page (github.com/LeiaLi/ReLoBlur) and
the LMD-ViT blur mask annotations (linked from the LMD-ViT paper and code),
then lay them out as the LBAG code expects, with MANUAL_DIR the folder you pass
as --manual_dir:
  MANUAL_DIR/dataset/{train,test}/<scene>/<seq>/<idx>_sharp.png
  MANUAL_DIR/dataset/{train,test}/<scene>/<seq>/<idx>_blur.png
  MANUAL_DIR/masks/{train,test}/<scene>/<seq>/<idx>.png
Masks may be grey or JPEG-noisy: they are binarised at half their full scale."""

  def _split_generators(self, dl_manager):
    root = self._manual_root(dl_manager)
    return self._available_splits(lambda split: readers.ReLoBlurSource(root, split))


@dataclasses.dataclass
class GoproConfig(tfds.core.BuilderConfig):
  blur: str = 'blur'  # 'blur' or 'blur_gamma' frames of GOPRO_Large.


class Gopro(_Builder):
  """GoPro (Nah et al., CVPR 2017): global motion blur, 1280x720. Masks are all
  ones (every pixel is blurred)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
    GoproConfig(name='blur', description='Blurred frames averaged as recorded.'),
    GoproConfig(
      name='blur_gamma',
      blur='blur_gamma',
      description='Blurred frames averaged after a gamma curve.',
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download GOPRO_Large (seungjunnah.github.io/Datasets/gopro) and unpack it in the
folder you pass as --manual_dir:
  MANUAL_DIR/GOPRO_Large/{train,test}/<sequence>/{blur,blur_gamma,sharp}/<frame>.png
MANUAL_DIR may also hold train/ and test/ directly, or the flat layout of
Restormer-style preparations: MANUAL_DIR/{train,test}/{input,target}/<frame>.png."""

  def _split_generators(self, dl_manager):
    root = self._manual_root(dl_manager)
    blur = self.builder_config.blur
    return self._available_splits(lambda split: readers.GoProSource(root, split, blur))


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  size: int = 256
  train_count: int = 2000
  test_count: int = 200
  seed: int = 0


class SyntheticLocalBlur(_Builder):
  """Synthetic local motion blur: soft objects cut from scikit-image's bundled
  photographs move over other photographs (see lmdvit_jax.data.synthetic). Test
  uses photos and random streams never used by train."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
    SyntheticConfig(name='256', description='256x256, 2000 train / 200 test.'),
    SyntheticConfig(
      name='128',
      size=128,
      train_count=4000,
      test_count=200,
      description='128x128, 4000 train / 200 test.',
    ),
    SyntheticConfig(
      name='tiny',
      size=32,
      train_count=8,
      test_count=4,
      description='32x32, 8 train / 4 test (tests).',
    ),
  ]

  def _split_generators(self, dl_manager):
    del dl_manager
    from lmdvit_jax.data import synthetic

    c = self.builder_config
    counts = {'train': c.train_count, 'test': c.test_count}
    return {
      split: self._generate_examples(
        synthetic.SyntheticSource(count=counts[split], size=c.size, seed=c.seed, split=split)
      )
      for split in SPLITS
    }


BUILDERS = {'reloblur': Reloblur, 'gopro': Gopro, 'synthetic_local_blur': SyntheticLocalBlur}


def build(
  name: str, data_dir: str | None = None, manual_dir: str | None = None, overwrite: bool = False
) -> tfds.core.DatasetBuilder:
  """Builds `name` ('reloblur', 'gopro/blur_gamma', 'synthetic_local_blur/tiny', ...)."""
  builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  mode = (
    tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if overwrite
    else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False, download_mode=mode
    )
  )
  return builder


# ---------------------------------------------------------------------------
# Reading built datasets.


class TfdsSource(Source):
  """A split of a TFDS dataset built by this package (read with `as_data_source`)."""

  def __init__(self, name: str, split: str = 'train', data_dir: str | None = None):
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
      raise DataError(f'Unknown TFDS dataset {name!r}: {e}') from e
    if not builder.is_prepared():
      raise DataError(
        f'TFDS dataset {name!r} is not built in {builder.data_dir}. Build it with: '
        f'python -m lmdvit_jax.data.build {name.split("/")[0]} '
        f'--data_dir=... (see README).'
      )
    self.name, self.split = name, split
    self._source = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self._source)

  def _example(self, index: int) -> Example:
    ex = dict(self._source[index])
    name = ex.get('name', f'{self.name}_{self.split}_{index:06d}')
    ex['name'] = name.decode() if isinstance(name, bytes) else str(name)
    return ex

  def __repr__(self) -> str:
    return f'TfdsSource({self.name}, {self.split}: {len(self)} examples)'
