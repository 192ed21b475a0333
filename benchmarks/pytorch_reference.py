r"""Times the official PyTorch LMD-ViT on this machine, for comparison.

Needs a checkout of the official repository (LeiaLi/LMD-ViT) and, in a
separate environment, torch, timm and einops (not project requirements):

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch timm einops
    /tmp/torchenv/bin/python -m benchmarks.pytorch_reference \
        --official_repo=/path/to/LMD-ViT --size=512 --kept=1.0,0.25

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
import os
import statistics
import time

import numpy as np

from benchmarks.common import import_official


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official_repo', required=True, help='folder with model_hw.py')
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--kept', default='1.0,0.25', help='comma-separated kept fractions')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.official_repo, 'model_hw.py')):
    parser.error(f'no model_hw.py in {args.official_repo}')

  torch, model_hw = import_official(args.official_repo)
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  net = model_hw.LMD(img_size=512, embed_dim=32, win_size=8, token_projection='linear',
                     token_mlp='lefflocal', depths=[1, 2, 8, 8, 2, 8, 8, 2, 1], modulator=True,
                     dd_in=3, drop_path_rate=0.1, prune_loc=[1] * 9).eval()

  rng = np.random.default_rng(0)
  patterns: dict[tuple[int, float], np.ndarray] = {}
  setting = {'kept': 1.0}
  real_forward = model_hw.PredictorLG.forward
  shifts = {id(m.score_predictor): m.shift_size for m in net.modules()
            if getattr(m, 'score_predictor', None) is not None}

  def forward(self, x):
    real_forward(self, x)  # Pay for the predictor, then override its decision.
    b, n, _ = x.shape
    side = int(round(n ** 0.5))
    grid = side // 8
    key = (grid, setting['kept'])
    if key not in patterns:
      keep = np.zeros(grid * grid, bool)
      keep[rng.permutation(grid * grid)[:int(round(setting['kept'] * grid * grid))]] = True
      patterns[key] = keep.reshape(grid, grid)
    keep = torch.from_numpy(np.kron(patterns[key], np.ones((8, 8), bool)))
    shift = shifts.get(id(self), 0)
    if shift:  # The block rolls the scores by -shift before pooling windows.
      keep = torch.roll(keep, shifts=(shift, shift), dims=(0, 1))
    logit = torch.where(keep, 50.0, -50.0).reshape(1, n, 1)
    return torch.cat([logit, -logit], -1).expand(b, n, 2)

  model_hw.PredictorLG.forward = forward
  x = torch.rand(1, 3, args.size, args.size)
  print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
  print('| size | kept | run (s) |\n| --- | --- | --- |')
  with torch.no_grad():
    for kept in (float(k) for k in args.kept.split(',')):
      setting['kept'] = kept
      net(x)
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
      print(f'| {args.size}x{args.size} | {kept} | {statistics.median(times):.2f} |', flush=True)


if __name__ == '__main__':
  main()
