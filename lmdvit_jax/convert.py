"""Official PyTorch LMD-ViT state dict -> params pytree (and an orbax checkpoint).

    python -m lmdvit_jax.convert model_LMDVIT.pth OUT_DIR   # or a .npz state dict

The model's keyword arguments (widths, depths, heads, window size, which stages
prune, modulator) are read off the key names and shapes and written beside the
params, so `OUT_DIR` is all that `evaluate.py` and `lmdvit_jax.deblur` need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import math
from pathlib import Path
import re
from typing import Any
import zipfile

from absl import app
import numpy as np

from lmdvit_jax.models.lmdvit import STAGE_NAMES
from lmdvit_jax.models.windows import relative_position_index

# Official stage prefixes in network order.
TORCH_STAGES = tuple(
  [f'encoderlayer_{i}' for i in range(4)] + ['conv'] + [f'decoderlayer_{i}' for i in range(4)]
)

_linear = lambda w: np.ascontiguousarray(w.T)  # [out, in] -> [in, out]
_conv = lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # [O, I, kh, kw] -> [kh, kw, I, O]
_deconv = lambda w: np.ascontiguousarray(
  w.transpose(2, 3, 0, 1)
)  # [I, O, kh, kw] -> [kh, kw, I, O]
_dwconv = lambda w: np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))  # [C, 1, 3, 3] -> [3, 3, C]
_same = lambda w: w

# (official suffix inside a block, our path inside the block, weight transform)
_LINEAR_MODULES = {
  'attn.qkv.to_q': ('attn', 'to_q'),
  'attn.qkv.to_kv': ('attn', 'to_kv'),
  'attn.proj': ('attn', 'proj'),
  'mlp.linear1.0': ('mlp', 'linear1'),
  'mlp.linear2.0': ('mlp', 'linear2'),
}
_PREDICTOR_MODULES = {
  'in_conv.0': 'in_linear1',
  'in_conv.3': 'in_linear2',
  'out_conv.0': 'out_linear1',
  'out_conv.2': 'out_linear2',
  'out_conv.4': 'out_linear3',
}
_TOP_MODULES = {
  'input_proj.proj.0': (('input_proj',), _conv),
  'output_proj.proj.0': (('output_proj',), _conv),
  **{f'dowsample_{i}.conv.0': ((f'downsample_{i}',), _conv) for i in range(4)},
  **{f'upsample_{i}.deconv.0': ((f'upsample_{i}',), _deconv) for i in range(4)},
}


class ConversionError(ValueError):
  """The state dict does not match the LMD-ViT layout."""


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Unwraps `{'state_dict': ...}` and drops a DataParallel `module.` prefix."""
  if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], Mapping):
    state_dict = state_dict['state_dict']
  out = {}
  for k, v in state_dict.items():
    out[k[len('module.') :] if k.startswith('module.') else k] = v
  return out


def _target(key: str) -> tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]] | None:
  """Our params path and weight transform for an official key (None for buffers)."""
  module, _, leaf = key.rpartition('.')
  for prefix, (path, fn) in _TOP_MODULES.items():
    if module == prefix:
      return path + ({'weight': 'kernel', 'bias': 'bias'}[leaf],), (
        fn if leaf == 'weight' else _same
      )
  m = re.fullmatch(r'(encoderlayer_\d|conv|decoderlayer_\d)\.blocks\.(\d+)\.(.+)', module)
  if m is None:
    return None
  stage = STAGE_NAMES[TORCH_STAGES.index(m.group(1))]
  n, rest = int(m.group(2)), m.group(3)
  block = (stage, f'block_{n}')
  if rest in ('norm1', 'norm2'):
    return block + (rest, {'weight': 'scale', 'bias': 'bias'}[leaf]), _same
  if rest == 'attn' and leaf == 'relative_position_bias_table':
    return block + ('attn', leaf), _same
  if rest == 'attn' and leaf == 'relative_position_index':
    return None  # a constant buffer: recomputed, checked in `params_from_torch`
  if rest == 'modulator' and leaf == 'weight':
    return block + ('modulator',), _same
  if rest in _LINEAR_MODULES:
    return block + _LINEAR_MODULES[rest] + ({'weight': 'kernel', 'bias': 'bias'}[leaf],), (
      _linear if leaf == 'weight' else _same
    )
  if rest == 'mlp.dwconv.0':
    return block + ('mlp', 'dwconv', {'weight': 'kernel', 'bias': 'bias'}[leaf]), (
      _dwconv if leaf == 'weight' else _same
    )
  if rest.startswith('score_predictor.'):
    sub = rest[len('score_predictor.') :]
    pred = (stage, f'predictor_{n}')
    if sub == 'in_conv.2':
      return pred + ('in_norm', {'weight': 'scale', 'bias': 'bias'}[leaf]), _same
    if sub in _PREDICTOR_MODULES:
      return pred + (_PREDICTOR_MODULES[sub], {'weight': 'kernel', 'bias': 'bias'}[leaf]), (
        _linear if leaf == 'weight' else _same
      )
  return None


def model_kwargs_from_torch(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Infers the `LMDViT` keyword arguments from official key names and shapes."""
  sd = strip_prefix(state_dict)
  if 'input_proj.proj.0.weight' not in sd:
    raise ConversionError(
      f'not an LMD-ViT state dict: no input_proj.proj.0.weight (first keys: {sorted(sd)[:5]})'
    )
  embed_dim = int(np.shape(sd['input_proj.proj.0.weight'])[0])
  depths, heads, prune_loc = [], [], []
  win_size = mlp_ratio = None
  modulator = False
  for prefix in TORCH_STAGES:
    blocks = {
      int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r'\.blocks\.(\d+)\.', k))
    }
    if not blocks:
      raise ConversionError(f'no blocks found for stage {prefix!r}')
    if blocks != set(range(len(blocks))):
      raise ConversionError(f'stage {prefix!r} has non-contiguous blocks {sorted(blocks)}')
    depths.append(len(blocks))
    table = np.shape(sd[f'{prefix}.blocks.0.attn.relative_position_bias_table'])
    heads.append(int(table[1]))
    ws = (int(round(math.sqrt(table[0]))) + 1) // 2
    if win_size is not None and ws != win_size:
      raise ConversionError(f'stages disagree on the window size ({win_size} vs {ws})')
    win_size = ws
    dim = np.shape(sd[f'{prefix}.blocks.0.norm1.weight'])[0]
    mlp_ratio = np.shape(sd[f'{prefix}.blocks.0.mlp.linear1.0.weight'])[0] / dim
    prune_loc.append(int(f'{prefix}.blocks.0.score_predictor.in_conv.0.weight' in sd))
    modulator = modulator or f'{prefix}.blocks.0.modulator.weight' in sd
  return dict(
    embed_dim=embed_dim,
    depths=depths,
    num_heads=heads,
    win_size=win_size,
    mlp_ratio=float(mlp_ratio or 4.0),
    modulator=modulator,
    prune_loc=prune_loc,
    keep_threshold=0.5,
  )


def params_from_torch(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Maps an official LMD-ViT state dict onto the params pytree of `LMDViT`.

  Args:
    state_dict: official key names -> arrays (numpy, or anything `np.asarray`
      takes, e.g. CPU torch tensors); may be wrapped in `{'state_dict': ...}`
      and carry a `module.` prefix.

  Returns:
    A nested dict of float32 numpy arrays, to use as `{'params': ...}`.

  Raises:
    ConversionError: a key could not be placed, a shape is wrong, or a param of
      the inferred model was left unfilled.
  """
  import jax  # Local: keeps `model_kwargs_from_torch` usable without tracing.

  from lmdvit_jax.models import LMDViT

  sd = strip_prefix(state_dict)
  kwargs = model_kwargs_from_torch(sd)
  ws = kwargs['win_size']
  side = ws * 16
  abstract = jax.eval_shape(
    lambda x: LMDViT(**kwargs).init(jax.random.PRNGKey(0), x),
    jax.ShapeDtypeStruct((1, side, side, 3), np.float32),
  )['params']
  expected = {
    tuple(k.key for k in path): leaf.shape
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)
  }

  params: dict[str, Any] = {}
  unplaced = []
  for key, value in sd.items():
    arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, 'detach') else value)
    if key.endswith('relative_position_index'):
      if not np.array_equal(arr, relative_position_index(ws)):
        raise ConversionError(f'{key} differs from the Swin relative position index')
      continue
    target = _target(key)
    if target is None or target[0] not in expected:
      unplaced.append(key)
      continue
    path, fn = target
    arr = fn(arr).astype(np.float32)
    if arr.shape != tuple(expected[path]):
      raise ConversionError(
        f'{key}: shape {arr.shape} after conversion, the model expects '
        f'{tuple(expected[path])} at {"/".join(path)}'
      )
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    if path[-1] in node:
      raise ConversionError(f'{key} maps onto {"/".join(path)}, which is already filled')
    node[path[-1]] = arr
  if unplaced:
    raise ConversionError(f'{len(unplaced)} state-dict keys could not be placed: {unplaced[:10]}')
  filled = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  missing = sorted('/'.join(p) for p in set(expected) - filled)
  if missing:
    raise ConversionError(f'{len(missing)} params were left unfilled: {missing[:10]}')
  return params


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """Reads an official `.pth` (needs PyTorch) or a `.npz` state dict."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no such state-dict file: {path}')
  if path.suffix == '.npz':
    try:
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise ConversionError(
        f'{path} is damaged or not a numpy .npz state dict ({type(e).__name__}: {e})'
      ) from None
  if path.suffix in ('.pth', '.pt', '.ckpt'):
    try:
      import torch
    except ImportError as e:
      raise ImportError(
        f'reading {path.name} needs PyTorch (pip install torch); alternatively save the '
        'state dict as .npz with numpy and convert that'
      ) from e
    try:
      obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many kinds
      raise ConversionError(
        f'{path} is damaged or not a PyTorch state dict '
        f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'
      ) from None
    if not isinstance(obj, Mapping):
      raise ConversionError(f'{path} holds a {type(obj).__name__}, not a state dict')
    return {k: v.numpy() for k, v in strip_prefix(obj).items() if hasattr(v, 'numpy')}
  raise ValueError(f'unknown state-dict format {path.suffix!r} (expected .pth or .npz)')


USAGE = 'python -m lmdvit_jax.convert IN.(pth|npz) OUT_DIR [--overwrite]'


def check_output(directory: str | Path, kwargs: Mapping[str, Any], overwrite: bool) -> None:
  """Refuses to write into a directory that holds a checkpoint (a training
  workdir, an earlier conversion) unless `overwrite`, which removes it first.

  Raises:
    FileExistsError: naming what is there and the flag.
  """
  from lmdvit_jax import checkpointing, files

  directory = Path(directory)
  files.check_writable_dir(directory, 'OUT_DIR')
  steps = checkpointing.all_steps(directory)
  recorded = (
    checkpointing.read_model_kwargs(directory)
    if (directory / checkpointing.MODEL_FILE).is_file()
    else None
  )
  if not steps and recorded in (None, files.jsonable(kwargs)):
    return
  if not overwrite:
    what = f'checkpoint steps {steps}' if steps else 'a model.json of another model'
    raise FileExistsError(
      f'{directory} already holds {what}; choose another OUT_DIR, or pass '
      '--overwrite to replace its checkpoint'
    )
  import shutil

  shutil.rmtree(directory / checkpointing.CHECKPOINTS, ignore_errors=True)
  (directory / checkpointing.MODEL_FILE).unlink(missing_ok=True)


def main(argv: list[str], overwrite: bool = False) -> int:
  """Converts IN (argv[1]) into the checkpoint directory OUT_DIR (argv[2])."""
  from lmdvit_jax import checkpointing

  if len(argv) != 3:
    raise app.UsageError(f'usage: {USAGE}')
  sd = load_state_dict(argv[1])
  try:
    kwargs = model_kwargs_from_torch(sd)
    params = params_from_torch(sd)
  except ConversionError as e:
    raise ConversionError(f'{argv[1]}: {e}') from None
  check_output(argv[2], kwargs, overwrite)
  checkpointing.save_model(argv[2], params, kwargs)
  from lmdvit_jax.models import count_params

  print(f'wrote {argv[2]}: {count_params(params):,} params, model {kwargs}')
  return 0


if __name__ == '__main__':
  from absl import flags

  from lmdvit_jax import cli

  _OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a checkpoint already in OUT_DIR.')
  cli.run(lambda argv: main(argv, _OVERWRITE.value), quiet=True)
