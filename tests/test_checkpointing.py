"""Checkpoint directories: training state round trip, load_model on a workdir, best/."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmdvit_jax import checkpointing, train_lib


def _state(seed: int) -> train_lib.TrainState:
  rng = np.random.default_rng(seed)
  params = {
    'layer': {
      'kernel': rng.standard_normal((3, 4)).astype(np.float32),
      'bias': rng.standard_normal((4,)).astype(np.float32),
    }
  }
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
  opt_state = tx.init(params)
  # Make the optimizer moments non-trivial.
  grads = jax.tree.map(lambda p: jnp.asarray(p) * 0.5, params)
  _, opt_state = tx.update(grads, opt_state, params)
  state = train_lib.TrainState(
    step=np.int32(7 + seed),
    params=params,
    opt_state=opt_state,
    rng=np.asarray(jax.random.key_data(jax.random.PRNGKey(seed))),
    skipped=np.int32(seed),
  )
  return train_lib.put_replicated(state, train_lib.make_mesh())


def _assert_trees_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_state_round_trip(tmp_path):
  saved = _state(1)
  data_state = {'next_index': 42, 'nested': {'a': [1, 2]}}
  with checkpointing.train_manager(tmp_path, async_save=True) as mngr:
    assert checkpointing.save_train_state(mngr, saved, data_state) == 8
    mngr.wait_until_finished()
  target = _state(2)  # Different values, same structure.
  with checkpointing.train_manager(tmp_path) as mngr:
    restored, restored_data = checkpointing.restore_train_state(mngr, target)
  _assert_trees_equal(restored, saved)
  assert restored_data == data_state
  assert isinstance(restored, train_lib.TrainState)
  assert restored.params['layer']['kernel'].sharding.is_fully_replicated


def test_restore_picks_latest_and_keeps_n(tmp_path):
  with checkpointing.train_manager(tmp_path, max_to_keep=2, async_save=False) as mngr:
    for seed in (1, 2, 3):
      checkpointing.save_train_state(mngr, _state(seed), {'i': seed})
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['10', '9']
  assert checkpointing.latest_step(tmp_path) == 10
  with checkpointing.train_manager(tmp_path) as mngr:
    restored, data_state = checkpointing.restore_train_state(mngr, _state(0))
    older, _ = checkpointing.restore_train_state(mngr, _state(0), step=9)
  assert int(restored.step) == 10 and data_state == {'i': 3}
  assert int(older.step) == 9


def test_load_model_reads_params_of_a_training_workdir(tmp_path):
  state = _state(1)
  checkpointing.write_model_json(tmp_path, {'embed_dim': 8, 'depths': (1, 2)})
  with checkpointing.train_manager(tmp_path, async_save=False) as mngr:
    checkpointing.save_train_state(mngr, state, {})
  kwargs, params = checkpointing.load_model(tmp_path)
  assert kwargs == {'embed_dim': 8, 'depths': [1, 2]}
  _assert_trees_equal(params, state.params)
  assert isinstance(params['layer']['kernel'], np.ndarray)


def test_save_best_keeps_only_improvements(tmp_path):
  kwargs = {'embed_dim': 8}
  p1, p2, p3 = (_state(s).params for s in (1, 2, 3))
  assert checkpointing.save_best(tmp_path, p1, kwargs, 10, {'wpsnr': 20.0, 'psnr': 25.0})
  assert not checkpointing.save_best(tmp_path, p2, kwargs, 20, {'wpsnr': 19.0})
  assert not checkpointing.save_best(tmp_path, p2, kwargs, 25, {'wpsnr': float('nan')})
  assert checkpointing.read_best(tmp_path)['step'] == 10
  assert checkpointing.save_best(tmp_path, p3, kwargs, 30, {'wpsnr': 21.5})
  best = checkpointing.read_best(tmp_path)
  assert best['step'] == 30 and best['wpsnr'] == 21.5
  # best/ is itself a checkpoint directory holding only the best step.
  assert [p.name for p in (tmp_path / 'best' / 'checkpoints').iterdir()] == ['30']
  loaded_kwargs, params = checkpointing.load_model(tmp_path / 'best')
  assert loaded_kwargs == kwargs
  _assert_trees_equal(params, p3)


def test_restore_without_checkpoint_raises(tmp_path):
  with checkpointing.train_manager(tmp_path) as mngr:
    with pytest.raises(FileNotFoundError):
      checkpointing.restore_train_state(mngr, _state(0))


def test_model_json_is_plain_json(tmp_path):
  checkpointing.write_model_json(tmp_path, {'depths': (np.int64(1), 2), 'mlp_ratio': np.float32(4)})
  assert json.loads((tmp_path / 'model.json').read_text()) == {'depths': [1, 2], 'mlp_ratio': 4.0}


def test_check_model_kwargs_refuses_another_model(tmp_path):
  checkpointing.check_model_kwargs(tmp_path, {'embed_dim': 8})  # nothing recorded yet
  checkpointing.write_model_json(tmp_path, {'embed_dim': 8, 'depths': (1, 2)})
  checkpointing.check_model_kwargs(tmp_path, {'embed_dim': 8, 'depths': (1, 2)})
  with pytest.raises(ValueError, match='embed_dim: 8 there, 16 now'):
    checkpointing.check_model_kwargs(tmp_path, {'embed_dim': 16, 'depths': (1, 2)})


def _damage(step_dir, how):
  """Truncates (or deletes) every data file of a step's params item."""
  files = [
    p
    for p in (step_dir / 'params').rglob('*')
    if p.is_file() and p.stat().st_size > 0 and p.name not in ('_METADATA', '_CHECKPOINT_METADATA')
  ]
  assert files
  for f in files:
    if how == 'delete':
      f.unlink()
    else:
      f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])


@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('how', ['truncate', 'delete'])
def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path, how, caplog):
  checkpointing.write_model_json(tmp_path, {'embed_dim': 8})
  with checkpointing.train_manager(tmp_path, max_to_keep=3, async_save=False) as mngr:
    for seed in (1, 2):
      checkpointing.save_train_state(mngr, _state(seed), {'i': seed})
  _damage(tmp_path / 'checkpoints' / '9', how)
  with checkpointing.train_manager(tmp_path) as mngr:
    restored, data_state = checkpointing.restore_train_state(mngr, _state(0))
  assert int(restored.step) == 8 and data_state == {'i': 1}
  _assert_trees_equal(restored.params, _state(1).params)
  assert 'Skipping damaged checkpoint step 9' in caplog.text
  _, params = checkpointing.load_model(tmp_path)  # evaluation and deblur fall back too
  _assert_trees_equal(params, _state(1).params)

  _damage(tmp_path / 'checkpoints' / '8', how)
  with pytest.raises(
    checkpointing.CheckpointError, match='no intact checkpoint in .*step 9.*step 8'
  ):
    checkpointing.load_model(tmp_path)


def test_damaged_steps_are_set_aside_not_deleted(tmp_path):
  with checkpointing.train_manager(tmp_path, max_to_keep=3, async_save=False) as mngr:
    for seed in (1, 2):
      checkpointing.save_train_state(mngr, _state(seed), {'i': seed})
  moved = checkpointing.set_aside_steps_after(tmp_path, 8)
  assert [p.name for p in moved] == ['9.damaged'] and moved[0].is_dir()
  assert checkpointing.all_steps(tmp_path) == [8]
  # The run can save step 9 again, and a second fallback keeps both damaged copies.
  with checkpointing.train_manager(tmp_path, max_to_keep=3, async_save=False) as mngr:
    checkpointing.save_train_state(mngr, _state(2), {'i': 2})
  assert checkpointing.all_steps(tmp_path) == [8, 9]
  assert [p.name for p in checkpointing.set_aside_steps_after(tmp_path, 8)] == ['9.damaged2']


def test_best_of_a_step_saved_before_a_resume_is_replaced(tmp_path):
  """A run resumed from step 4 evaluates step 6 again; `best/` may hold step 6
  from before the resume and is replaced, not an error."""
  params = _state(1).params
  assert checkpointing.save_best(tmp_path, params, {'embed_dim': 8}, 6, {'wpsnr': 20.0})
  better = _state(2).params
  assert checkpointing.save_best(tmp_path, better, {'embed_dim': 8}, 6, {'wpsnr': 21.0})
  assert checkpointing.read_best(tmp_path)['wpsnr'] == 21.0
  _, restored = checkpointing.load_model(tmp_path / 'best')
  _assert_trees_equal(restored, better)


def _strict_json(path):
  def refuse(constant):
    raise ValueError(f'{path} holds {constant}, which is not JSON')

  return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_every_json_file_is_strict_json(tmp_path):
  from lmdvit_jax import files

  assert files.jsonable(
    {'a': [np.float32(np.nan), np.inf, np.int64(3)], 'b': (np.bool_(True),), 1: np.arange(2)}
  ) == {'a': [None, None, 3], 'b': [True], '1': [0, 1]}
  # An empty blur mask makes the input's PSNR outside it infinite.
  assert checkpointing.save_best(
    tmp_path,
    _state(1).params,
    {'embed_dim': 8},
    3,
    {'wpsnr': 20.0, 'input_sharp_psnr': float('inf')},
  )
  best = _strict_json(tmp_path / 'best' / 'best.json')
  assert best['metrics']['input_sharp_psnr'] is None
  assert json.loads(files.json_line({'x': float('nan')})) == {'x': None}


def test_a_step_that_is_not_there_is_named_with_the_steps_that_are(tmp_path):
  params = {'w': np.ones((2,), np.float32)}
  for step in (3, 5):
    checkpointing.save_model(tmp_path, params, {'embed_dim': 1}, step=step)
  with pytest.raises(
    checkpointing.CheckpointError, match=r'no checkpoint at step 999 in .*; steps: 3, 5'
  ):
    checkpointing.load_model(tmp_path, 999)
  _, got = checkpointing.load_model(tmp_path, 3)
  np.testing.assert_array_equal(got['w'], params['w'])
