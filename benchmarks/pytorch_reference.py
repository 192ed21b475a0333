r"""Times the official PyTorch LMD-ViT on this machine, for comparison.

Needs a checkout of the official repository (LeiaLi/LMD-ViT) and, in a
separate environment, torch, timm and einops (not project requirements):

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch timm einops
    /tmp/torchenv/bin/python -m benchmarks.pytorch_reference \
        --official_repo=/path/to/LMD-ViT --size=512 --kept=1.0,0.25
    /tmp/torchenv/bin/python -m benchmarks.pytorch_reference --official_repo=... \
        --train --size=256 --batch=2 --arch='{"embed_dim": 16}'   # the train step, as JSON
    /tmp/torchenv/bin/python -m benchmarks.pytorch_reference --official_repo=... \
        --profile --size=1536x2176 --kept=0.25     # inference time by part, as JSON

Released configuration, random weights, batch 1, eval mode, no autograd,
threads = CPU count. The confidence predictors run on every token as usual
(their cost is part of the measurement); their output is then replaced by
logits that keep a fixed random share `kept` of the windows, the same window
indices in every block's own (shifted or not) window grid, so every pruning
block runs exactly that share. Prints the median of `--repeats` runs after one
warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from benchmarks.common import import_official

RELEASED = dict(
  embed_dim=32,
  win_size=8,
  depths=[1, 2, 8, 8, 2, 8, 8, 2, 1],
  num_heads=[1, 2, 4, 8, 16, 16, 8, 4, 2],
  mlp_ratio=4.0,
  modulator=True,
  drop_path_rate=0.1,
  prune_loc=[1] * 9,
)


def official_train_step(
  repo: str, arch: dict, host: dict[str, np.ndarray], lr: float = 2e-4, weight_decay: float = 0.02
):
  """One official train step per call (train mode: Gumbel decisions, stochastic
  depth): forward, L1 loss, backward, AdamW. `arch`: LMDViT's keyword arguments
  (`RELEASED`'s keys); `host`: numpy `blur`, `sharp` [B, H, W, 3]."""
  torch, model_hw = import_official(repo)
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  # img_size 512: every stage keeps win_size windows with shifts, as ours (FACTS.md).
  net = model_hw.LMD(
    img_size=512,
    embed_dim=arch['embed_dim'],
    win_size=arch['win_size'],
    token_projection='linear',
    token_mlp='lefflocal',
    depths=list(arch['depths']),
    num_heads=list(arch['num_heads']),
    mlp_ratio=arch['mlp_ratio'],
    modulator=arch['modulator'],
    dd_in=3,
    drop_path_rate=arch['drop_path_rate'],
    prune_loc=list(arch['prune_loc']),
  ).train()
  opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
  to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  blur, sharp = to_nchw(host['blur']), to_nchw(host['sharp'])

  def run():
    opt.zero_grad(set_to_none=True)
    restored = net(blur)[0]
    loss = (restored - sharp).abs().mean()
    loss.backward()
    opt.step()

  return run, dict(params=sum(p.numel() for p in net.parameters()), version=torch.__version__)


def train(args) -> None:
  """`--train`: the median seconds of `--repeats` official train steps after one,
  printed as one JSON line (`benchmarks.train_step` runs this in its own process)."""
  from benchmarks.common import random_batch

  arch = {**RELEASED, **json.loads(args.arch or '{}')}
  run, facts = official_train_step(
    args.official_repo, arch, random_batch(args.batch, int(args.size))
  )
  run()
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  print(json.dumps({'s_per_step': statistics.median(times), 'times': times, **facts}), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official_repo', required=True, help='folder with model_hw.py')
  parser.add_argument('--size', default='512', help='S or HxW (--train: the patch side)')
  parser.add_argument('--kept', default='1.0,0.25', help='comma-separated kept fractions')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument(
    '--train',
    action='store_true',
    help='time the train step instead (--size is the patch side) and print it as JSON',
  )
  parser.add_argument('--batch', type=int, default=2, help='--train: batch size')
  parser.add_argument(
    '--profile',
    action='store_true',
    help='time inference at the first --kept and split one run by part, as JSON',
  )
  parser.add_argument(
    '--json',
    action='store_true',
    help='print the inference times as one JSON line {kept: seconds} (benchmarks.inference)',
  )
  parser.add_argument(
    '--arch',
    default=None,
    help='--train: JSON of LMDViT keyword arguments '
    'that differ from the released ones, e.g. {"embed_dim": 16}',
  )
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.official_repo, 'model_hw.py')):
    parser.error(f'no model_hw.py in {args.official_repo}')
  if args.train:
    train(args)
    return

  if args.profile:
    profile(args)
    return
  net, setting = official_pruned(args.official_repo)
  import torch

  size = _size(args.size)
  x = torch.rand(1, 3, *size)
  if not args.json:
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    print('| size | kept | run (s) |\n| --- | --- | --- |')
  seconds = {}
  with torch.no_grad():
    for kept in (float(k) for k in args.kept.split(',')):
      setting['kept'] = kept
      net(x)
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
      seconds[kept] = statistics.median(times)
      if not args.json:
        print(f'| {size[0]}x{size[1]} | {kept} | {seconds[kept]:.2f} |', flush=True)
  if args.json:
    print(json.dumps({'torch': torch.__version__, 'seconds': seconds}))


def _size(text) -> tuple[int, int]:
  h, _, w = str(text).partition('x')
  return int(h), int(w or h)


def official_pruned(repo: str):
  """The released official model in eval mode whose confidence predictors run
  as usual, then are overridden to keep a fixed random share `setting['kept']`
  of the windows (the same indices in every block's own grid, shifted or not),
  on images of any size. Returns (net, setting)."""
  torch, model_hw = import_official(repo)
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  net = model_hw.LMD(
    img_size=512, token_projection='linear', token_mlp='lefflocal', dd_in=3, **RELEASED
  ).eval()
  rng = np.random.default_rng(0)
  patterns: dict[tuple[int, int, float], np.ndarray] = {}
  setting = {'kept': 1.0, 'hw': (0, 0)}
  real_predict = model_hw.PredictorLG.forward
  real_block = model_hw.LeWinTransformerBlock.forward
  shifts = {
    id(m.score_predictor): m.shift_size
    for m in net.modules()
    if getattr(m, 'score_predictor', None) is not None
  }

  def block(self, x, *args, **kwargs):
    setting['hw'] = tuple(x.shape[1:3])  # The block's map [B, H, W, C]: its predictor's grid.
    return real_block(self, x, *args, **kwargs)

  def predict(self, x):
    real_predict(self, x)  # Pay for the predictor, then override its decision.
    b, n, _ = x.shape
    h, w = setting['hw']
    key = (h // 8, w // 8, setting['kept'])
    if key not in patterns:
      cells = key[0] * key[1]
      keep = np.zeros(cells, bool)
      keep[rng.permutation(cells)[: int(round(setting['kept'] * cells))]] = True
      patterns[key] = keep.reshape(key[0], key[1])
    keep = torch.from_numpy(np.kron(patterns[key], np.ones((8, 8), bool)))
    shift = shifts.get(id(self), 0)
    if shift:  # The block rolls the scores by -shift before pooling windows.
      keep = torch.roll(keep, shifts=(shift, shift), dims=(0, 1))
    logit = torch.where(keep, 50.0, -50.0).reshape(1, n, 1)
    return torch.cat([logit, -logit], -1).expand(b, n, 2)

  model_hw.PredictorLG.forward = predict
  model_hw.LeWinTransformerBlock.forward = block
  return net, setting


def profile(args) -> None:
  """`--profile`: the median run time at `--kept` and, from one profiled run,
  the milliseconds of each part (`benchmarks.inference_parts`), as JSON."""
  net, setting = official_pruned(args.official_repo)
  import torch
  from torch.profiler import ProfilerActivity, record_function
  from torch.profiler import profile as torch_profile

  _, model_hw = import_official(args.official_repo)
  parts = {
    'convolutions and resampling': (
      model_hw.InputProj,
      model_hw.OutputProj,
      model_hw.Downsample,
      model_hw.Upsample,
    ),
    'confidence predictors': (model_hw.PredictorLG,),
    'attention (W-MSA)': (model_hw.WindowAttention,),
    'feed-forward (W-LeFF)': (model_hw.LeFF,),
  }

  def wrap(module, label):
    forward = module.forward

    def scoped(*a, **k):
      with record_function(label):
        return forward(*a, **k)

    module.forward = scoped

  for m in net.modules():
    for label, kinds in parts.items():
      if isinstance(m, kinds):
        wrap(m, label)
    if isinstance(m, model_hw.LeWinTransformerBlock):
      wrap(m.norm1, 'LayerNorms')
      wrap(m.norm2, 'LayerNorms')
  setting['kept'] = float(args.kept.split(',')[0])
  x = torch.rand(1, 3, *_size(args.size))
  with torch.no_grad():
    net(x)
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      net(x)
      times.append(time.perf_counter() - start)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
      start = time.perf_counter()
      net(x)
      profiled = time.perf_counter() - start
  seconds = statistics.median(times)
  ms = {label: 0.0 for label in [*parts, 'LayerNorms']}
  for event in prof.key_averages():
    if event.key in ms:
      ms[event.key] = event.cpu_time_total / 1e3
  # The profiled run's shares, applied to the median run time.
  scale = seconds / profiled
  parts_ms = {k: v * scale for k, v in ms.items()}
  parts_ms['window gather and scatter'] = 0.0
  parts_ms['the rest'] = max(0.0, 1e3 * seconds - sum(parts_ms.values()))
  print(json.dumps({'seconds': seconds, 'parts_ms': parts_ms, 'torch': torch.__version__}))


if __name__ == '__main__':
  main()
