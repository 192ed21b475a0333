"""Official state dict -> params: names, shapes, errors, the command line."""

import ast
import sys

import numpy as np
import pytest

from configs import lmdvit as lmdvit_config
from lmdvit_jax import checkpointing, convert
from lmdvit_jax.models import count_params
from tests.helpers import fixture_names


@pytest.fixture(scope='module')
def state_dict(reference):
  with np.load(reference / f'{fixture_names()[0]}_weights.npz') as z:
    return {k: z[k] for k in z.files}


def released_state_dict(reference):
  """Zero arrays with every key and shape of the released checkpoint."""
  sd = {}
  for line in (reference / 'released_state_dict_keys.txt').read_text().splitlines():
    key, shape = line.split('\t')
    dtype = np.int64 if key.endswith('relative_position_index') else np.float32
    sd[key] = np.zeros(ast.literal_eval(shape), dtype)
  for key in [k for k in sd if k.endswith('relative_position_index')]:
    sd[key] = convert.relative_position_index(8).astype(np.int64)
  return sd


def test_released_layout_converts_to_released_config(reference):
  sd = released_state_dict(reference)
  kwargs = convert.model_kwargs_from_torch(sd)
  expected = dict(lmdvit_config.get_config().model)
  expected.pop('drop_path_rate')  # training-only, not recorded in weights
  assert kwargs == {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
  assert count_params(convert.params_from_torch(sd)) == 54_549_163


def test_weights_land_transposed(state_dict):
  params = convert.params_from_torch(state_dict)
  w = state_dict['decoderlayer_1.blocks.1.attn.qkv.to_kv.weight']
  np.testing.assert_array_equal(params['decoder_1']['block_1']['attn']['to_kv']['kernel'], w.T)
  conv = state_dict['dowsample_2.conv.0.weight']  # [O, I, kh, kw]
  np.testing.assert_array_equal(params['downsample_2']['kernel'][1, 3], conv[:, :, 1, 3].T)
  up = state_dict['upsample_0.deconv.0.weight']  # [I, O, kh, kw]
  np.testing.assert_array_equal(params['upsample_0']['kernel'][0, 1], up[:, :, 0, 1])
  dw = state_dict['encoderlayer_0.blocks.0.mlp.dwconv.0.weight']  # [C, 1, 3, 3]
  np.testing.assert_array_equal(
    params['encoder_0']['block_0']['mlp']['dwconv']['kernel'][2, 0], dw[:, 0, 2, 0]
  )
  np.testing.assert_array_equal(
    params['bottleneck']['predictor_1']['in_norm']['scale'],
    state_dict['conv.blocks.1.score_predictor.in_conv.2.weight'],
  )


def test_wrapped_and_prefixed_state_dicts(state_dict):
  wrapped = {'state_dict': {'module.' + k: v for k, v in state_dict.items()}, 'epoch': 3}
  a = convert.params_from_torch(wrapped)
  b = convert.params_from_torch(state_dict)
  assert count_params(a) == count_params(b)
  np.testing.assert_array_equal(a['input_proj']['kernel'], b['input_proj']['kernel'])


def test_unplaceable_key_is_named(state_dict):
  sd = dict(state_dict, **{'encoderlayer_0.blocks.0.attn.extra.weight': np.zeros(3)})
  with pytest.raises(convert.ConversionError, match=r'encoderlayer_0\.blocks\.0\.attn\.extra'):
    convert.params_from_torch(sd)


def test_missing_param_is_named(state_dict):
  sd = {k: v for k, v in state_dict.items() if k != 'decoderlayer_2.blocks.1.norm2.bias'}
  with pytest.raises(convert.ConversionError, match='decoder_2/block_1/norm2/bias'):
    convert.params_from_torch(sd)


def test_wrong_shape_is_named(state_dict):
  sd = dict(state_dict)
  sd['output_proj.proj.0.bias'] = np.zeros(5, np.float32)
  with pytest.raises(convert.ConversionError, match='output_proj.proj.0.bias'):
    convert.params_from_torch(sd)


def test_not_a_state_dict():
  with pytest.raises(convert.ConversionError, match='not an LMD-ViT state dict'):
    convert.params_from_torch({'fc.weight': np.zeros((2, 2))})


def test_command_line_npz_round_trip(reference, state_dict, tmp_path):
  out = tmp_path / 'ckpt'
  src = reference / f'{fixture_names()[0]}_weights.npz'
  assert convert.main(['convert', str(src), str(out)]) == 0
  kwargs, params = checkpointing.load_model(out)
  assert kwargs == convert.model_kwargs_from_torch(state_dict)
  expected = convert.params_from_torch(state_dict)
  np.testing.assert_array_equal(
    params['decoder_3']['block_0']['modulator'], expected['decoder_3']['block_0']['modulator']
  )
  assert count_params(params) == count_params(expected)


def test_pth_without_torch_explains(tmp_path, monkeypatch):
  path = tmp_path / 'model.pth'
  path.write_bytes(b'not really')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch -> ImportError
  with pytest.raises(ImportError, match='needs PyTorch'):
    convert.load_state_dict(path)


def test_missing_and_unknown_files(tmp_path):
  with pytest.raises(FileNotFoundError):
    convert.load_state_dict(tmp_path / 'nope.pth')
  (tmp_path / 'w.bin').write_bytes(b'')
  with pytest.raises(ValueError, match='unknown state-dict format'):
    convert.load_state_dict(tmp_path / 'w.bin')
