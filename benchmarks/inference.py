"""Pruned inference speed, FLOPs and memory of the released configuration.

    python -m benchmarks.inference                       # 512 and 1024, all modes
    python -m benchmarks.inference --sizes=2176x1536 --modes=dense,exact

Modes:
  dense      pruning off (`prune_loc` all 0, every window computed);
  exact      `capacity='exact'` (`--chunks`: `capacity_chunks`),
             predictors calibrated to keep `--exact_keep` of the windows (random
             weights otherwise keep an arbitrary share); it is followed by the
             fixed budget at the kept fraction it measured ("budget=exact"), timed
             alternately with it, and their ratio;
  <float>    fixed budget b with predictors that keep every window, so each
             block runs exactly b of its windows.
Given `--official_repo` (and `--official_python`, a Python with torch and
einops), the official model then runs in its own process after ours, at the
same sizes: every window kept against our `dense`, and a fixed random share
kept in every block against each budget (`benchmarks.pytorch_reference`);
a second table puts the two side by side.
Times are medians over `--repeats` runs after one warm-up; compilation is
timed apart (no persistent compilation cache here). FLOPs come from XLA's cost
analysis of the compiled program and memory from its buffer assignment
(arguments + outputs + temporaries).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import calibrate, cpu_model, keep_all
from configs import lmdvit as lmdvit_config
from lmdvit_jax import cli, programs
from lmdvit_jax.models import LMDViT, init_params, pruning

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a program, so that importing the module claims no flag names.
  flags.DEFINE_string('sizes', '512,1024', 'HxW or S (square), comma separated')
  flags.DEFINE_string('modes', 'dense,exact,1.0,0.5,0.25,0.1', 'comma separated')
  flags.DEFINE_integer('repeats', 3, 'timed runs per mode')
  flags.DEFINE_float('exact_keep', 0.25, 'kept fraction targeted in exact mode')
  flags.DEFINE_integer('embed_dim', 32, '32 released, 16 small')
  flags.DEFINE_integer('chunks', pruning.DEFAULT_CHUNKS, "capacity_chunks of 'exact' mode")
  flags.DEFINE_string('official_repo', None, 'a checkout of LeiaLi/LMD-ViT: time it too')
  flags.DEFINE_string('official_python', sys.executable, 'Python with torch for it')


def parse_size(s: str) -> tuple[int, int]:
  h, _, w = s.partition('x')
  return int(h), int(w or h)


def compile_program(model: LMDViT, params, x) -> dict:
  """Compiles the model's forward pass: the executable, compile time, FLOPs, memory."""
  t0 = time.perf_counter()
  compiled = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, x).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  peak = programs.compiled_memory(compiled)
  peak = float('nan') if peak is None else peak
  out = compiled(params, x)  # warm-up
  jax.block_until_ready(out)
  kept = [float(np.mean(d)) for d in out.decisions]
  weights = [d.size for d in out.decisions]
  return dict(
    compiled=compiled,
    params=params,
    compile_s=compile_s,
    gflops=cost['flops'] / 1e9,
    peak_mb=peak / 2**20,
    kept=float(np.average(kept, weights=weights)) if kept else 1.0,
  )


def time_alternately(programs: list[dict], x, repeats: int) -> list[float]:
  """Median seconds per call of each program, runs interleaved (noise hits all alike)."""
  times = [[] for _ in programs]
  for _ in range(repeats):
    for t, p in zip(times, programs):
      t0 = time.perf_counter()
      jax.block_until_ready(p['compiled'](p['params'], x))
      t.append(time.perf_counter() - t0)
  return [statistics.median(t) for t in times]


def row(h: int, w: int, mode: str, kept: float, seconds: float, r: dict) -> str:
  return (
    f'| {h}x{w} | {mode} | {kept:.3f} | {seconds:.2f} | {r["compile_s"]:.1f} | '
    f'{r["gflops"]:.0f} | {r["peak_mb"]:.0f} |'
  )


def official_seconds(h: int, w: int, kept: list[float]) -> dict[float, float]:
  """The official model's median seconds at each kept share, in its own process."""
  cmd = [
    FLAGS.official_python,
    '-m',
    'benchmarks.pytorch_reference',
    f'--official_repo={FLAGS.official_repo}',
    f'--size={h}x{w}',
    f'--kept={",".join(map(str, kept))}',
    f'--repeats={FLAGS.repeats}',
    '--json',
  ]
  out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
  return {float(k): v for k, v in out['seconds'].items()}


def side_by_side(ours: dict[tuple[str, str], float]) -> None:
  """Each size's official times, then ours against them."""
  print(f'\nagainst the official model, each in its own process ({cpu_model()}):')
  print('| size | ours | official | ours (s) | official (s) | ours / official |')
  print('| --- | --- | --- | --- | --- | --- |')
  for size in dict.fromkeys(s for s, _ in ours):
    h, w = parse_size(size)
    shares = {m: 1.0 if m == 'dense' else float(m) for s, m in ours if s == size}
    theirs = official_seconds(h, w, sorted(set(shares.values()), reverse=True))
    for mode, kept in shares.items():
      label = 'every window kept' if kept == 1.0 else f'{kept:g} kept at random'
      t_ours, t_theirs = ours[size, mode], theirs[kept]
      print(
        f'| {h}x{w} | {mode} | {label} | {t_ours:.2f} | {t_theirs:.2f} | {t_ours / t_theirs:.2f} |',
        flush=True,
      )


def main(argv):
  del argv
  cfg = dict(lmdvit_config.get_config().model)
  if FLAGS.official_repo and FLAGS.embed_dim != cfg['embed_dim']:
    cli.fail(f'--official_repo times the released model: leave --embed_dim at {cfg["embed_dim"]}')
  cfg['embed_dim'] = FLAGS.embed_dim
  rng = np.random.default_rng(0)
  print(
    f'jax {jax.__version__}, backend {jax.default_backend()}, '
    f'{jax.device_count()} device(s), embed_dim {cfg["embed_dim"]}, '
    f"exact mode in chunks of 1/{FLAGS.chunks} of a block's windows"
  )
  print('| size | mode | kept | run (s) | compile (s) | XLA GFLOPs | XLA memory (MB) |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  ratios = []
  timed: dict[tuple[str, str], float] = {}  # (size, mode) -> seconds, for the official table
  for size in FLAGS.sizes.split(','):
    h, w = parse_size(size)
    x = jnp.asarray(rng.uniform(size=(1, h, w, 3)), jnp.float32)
    base = None
    for mode in FLAGS.modes.split(','):
      if mode == 'dense':
        model = LMDViT(**dict(cfg, prune_loc=(0,) * 9), capacity=1.0)
        params = init_params(model, 0)
      else:
        capacity = mode if mode == 'exact' else float(mode)
        model = LMDViT(**cfg, capacity=capacity, capacity_chunks=FLAGS.chunks)
        if base is None:
          base = init_params(model, 0)
        params = keep_all(model, base)
      if mode != 'exact':
        r = compile_program(model, params, x)
        [seconds] = time_alternately([r], x, FLAGS.repeats)
        kept = r['kept'] if mode == 'dense' else min(r['kept'], capacity)
        print(row(h, w, mode, kept, seconds, r), flush=True)
        timed[size, mode] = seconds
        continue
      exact = compile_program(model, calibrate(model, base, x, FLAGS.exact_keep), x)
      # The fixed budget that runs the same share of windows exact mode kept.
      budget = compile_program(model.clone(capacity=exact['kept']), params, x)
      t_exact, t_budget = time_alternately([exact, budget], x, FLAGS.repeats)
      print(row(h, w, 'exact', exact['kept'], t_exact, exact), flush=True)
      print(row(h, w, 'budget=exact', exact['kept'], t_budget, budget), flush=True)
      ratios.append((f'{h}x{w}', t_exact / t_budget, exact['compile_s'] / budget['compile_s']))
  for size, time_ratio, compile_ratio in ratios:
    print(
      f'{size}: exact / fixed budget at its kept fraction: time {time_ratio:.2f}x, '
      f'compile {compile_ratio:.2f}x'
    )
  if FLAGS.official_repo:
    side_by_side(timed)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
