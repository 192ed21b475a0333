"""Helpers the benchmarks share: configs and batches, random weights that keep a
chosen share of windows, and the official model imported from a checkout.

Only numpy is imported at the top, so `pytorch_reference` runs in an
environment with torch and without jax.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np


def load_config(name: str, patch: int, batch: int, dtype: str, remat: str):
  """`configs.NAME` with the benchmark's patch, batch, compute dtype and remat."""
  config = importlib.import_module(f'configs.{name}').get_config()
  with config.unlocked():
    config.update(patch_size=patch, batch_size=batch, compute_dtype=dtype, remat=remat)
  return config


def random_batch(batch: int, patch: int) -> dict[str, np.ndarray]:
  """Random blurred/sharp images `[B, P, P, 3]` and a centred square mask `[B, P, P, 1]`."""
  rng = np.random.default_rng(0)
  mask = np.zeros((batch, patch, patch, 1), np.float32)
  mask[:, patch // 4 : 3 * patch // 4, patch // 4 : 3 * patch // 4] = 1
  return {
    'blur': rng.random((batch, patch, patch, 3), np.float32),
    'sharp': rng.random((batch, patch, patch, 3), np.float32),
    'mask': mask,
  }


def predictor_paths(model) -> list[tuple[str, str]]:
  """(stage, predictor) names in network order."""
  from lmdvit_jax import inference

  return [(b.stage, f'predictor_{b.block}') for b in inference.decision_blocks(model)]


def keep_all(model, params):
  """`params` with every confidence predictor set to keep every window."""
  import jax

  params = jax.tree_util.tree_map(np.array, params)
  for stage, pred in predictor_paths(model):
    params[stage][pred]['out_linear3']['kernel'][:] = 0
    params[stage][pred]['out_linear3']['bias'][:] = [50.0, -50.0]
  return params


def calibrate(model, params, x, fraction: float):
  """Sets each predictor's last layer so that it keeps about `fraction` of windows.

  Predictors are set in network order, each after the ones upstream of it
  (their decisions change its input), so every block keeps about `fraction`.
  """
  import jax

  from lmdvit_jax.models import windows as win

  params = jax.tree_util.tree_map(np.array, params)
  masked = model.clone(capacity='masked')
  apply = jax.jit(lambda p, x: masked.apply({'params': p}, x))
  for k, (stage, pred) in enumerate(predictor_paths(model)):
    out = apply(params, x)
    shift = model.win_size // 2 if pred.endswith('_1') else 0
    logits = win.window_mean(win.roll(out.scores[k], -shift), model.win_size)
    diff = np.asarray(logits[..., 0] - logits[..., 1]).ravel()
    # Scale the last layer to logit differences of order 1 first: with random
    # weights they are about 1e-6, where float32 softmax rounds ties to 0.5.
    scale = 1.0 / max(float(np.std(diff)), 1e-12)
    last = params[stage][pred]['out_linear3']
    last['kernel'] *= scale
    last['bias'] *= scale
    last['bias'][0] -= np.quantile(diff * scale, 1 - fraction)
  return params


def import_official(repo: str):
  """Imports the official `model_hw`, standing in for the imports it makes but never
  needs to train (a module the repository does not ship; torchvision's
  `save_image`; timm's three layer helpers, when timm is not installed)."""
  import torch

  def stub(name, **attrs):
    if name in sys.modules:
      return
    try:
      importlib.import_module(name)
    except ImportError:
      module = types.ModuleType(name)
      module.__dict__.update(attrs)
      sys.modules[name] = module
      parent, _, child = name.rpartition('.')
      if parent:
        stub(parent)
        setattr(sys.modules[parent], child, module)

  class DropPath(torch.nn.Module):
    """Stochastic depth per sample (the behaviour of timm's layer)."""

    def __init__(self, p=0.0):
      super().__init__()
      self.p = p

    def forward(self, x):
      if not self.training or self.p == 0.0:
        return x
      keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= self.p
      return x * keep.to(x.dtype) / (1 - self.p)

  stub('mimo_modules.MIMOUNet', EBlock=None, DBlock=None)
  stub('torchvision.utils', save_image=None)
  stub(
    'timm.models.layers',
    DropPath=DropPath,
    to_2tuple=lambda v: (v, v),
    trunc_normal_=lambda t, std=1.0: torch.nn.init.trunc_normal_(t, std=std),
  )
  sys.path.insert(0, repo)
  import model_hw

  return torch, model_hw


def op_times(compiled, args, trace_dir: str) -> list[tuple[str, str, float]]:
  """Profiles one run of `compiled(*args)` with `jax.profiler`: for each HLO op
  run, (its name, its metadata's op_name: the flax module path and named
  scopes, milliseconds)."""
  import glob
  import gzip
  import json
  import re

  import jax

  names = dict(re.findall(r'%?([\w.\-]+) = [^\n]*?op_name="([^"]*)"', compiled.as_text()))
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  jax.block_until_ready(compiled(*args))
  jax.profiler.stop_trace()
  path = sorted(glob.glob(f'{trace_dir}/plugins/profile/*/perfetto_trace.json.gz'))[-1]
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  out = []
  for e in events:
    op = e.get('args', {}).get('hlo_op') if e.get('ph') == 'X' else None
    if op is not None:
      out.append((op, names.get(op, ''), e['dur'] / 1e3))
  return out


def cpu_model() -> str:
  """The CPU's model name (tables of timings say which machine gave them)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform

  return platform.processor() or 'unknown CPU'
