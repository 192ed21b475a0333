"""The outside set: a second local-blur generator sharing nothing with `synthetic`."""

import numpy as np
import pytest

from lmdvit_jax.data import open_source, outside, photos


def test_examples_are_seeded_triples_identical_outside_the_mask():
  source = open_source('outside?count=4&size=96x64&seed=3')
  again = open_source('outside?count=4&size=96x64&seed=3')
  other = open_source('outside?count=4&size=96x64&seed=4')
  for i in range(len(source)):
    ex = source.example(i)
    assert ex['blur'].shape == ex['sharp'].shape == (64, 96, 3) and ex['mask'].shape == (64, 96, 1)
    assert ex['blur'].dtype == np.uint8 and set(np.unique(ex['mask'])) <= {0, 1}
    np.testing.assert_array_equal(ex['blur'], again.example(i)['blur'])
    outside_mask = ex['mask'][..., 0] == 0
    np.testing.assert_array_equal(ex['blur'][outside_mask], ex['sharp'][outside_mask])
  assert any(
    not np.array_equal(source.example(i)['blur'], other.example(i)['blur']) for i in range(4)
  )
  blurred = [source.example(i) for i in range(4)]
  assert sum(np.any(e['blur'] != e['sharp']) for e in blurred) >= 3


def test_it_shares_no_photograph_with_the_training_generator():
  names = {p.stem.lower() for p in outside.PHOTO_DIR.glob('*.jpg')}
  assert len(names) >= 8
  package = {
    path.rsplit('/', 1)[-1].rsplit('.', 1)[0].lower() for _, path in photos.PACKAGE_PHOTOS.values()
  }
  assert not names & package


def test_bad_specs_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match='Unknown option'):
    open_source('outside?colour=1')
  with pytest.raises(ValueError, match='takes no path'):
    open_source('outside:/somewhere')
  with pytest.raises(FileNotFoundError):
    open_source(f'outside?photos={tmp_path / "missing"}')[0]
