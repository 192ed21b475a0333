r"""How fast can the train step be on this machine? The time of its matrix multiplies.

  python -m benchmarks.matmul_floor                    # lmdvit_small, 256x256, batch 2
  python -m benchmarks.matmul_floor --configs=tiny --patch=128
  python -m benchmarks.matmul_floor --official_repo=/path/to/LMD-ViT   # and the goal

Every `dot` of our compiled train step (forward, backward, losses, AdamW) is read
from its HLO before optimisation, as a batched product [b, m, k] @ [b, k, n]. Each
distinct shape is then timed alone, jit-compiled in JAX and, when torch is
importable, as `torch.matmul` in the same process, alternating, on inputs already
in that layout. The sum over the step's dots, each at its measured time, is what
the multiplies alone cost at each library's speed: a floor for any step that
does the same arithmetic with that library's kernels, since it leaves out every
layout copy, elementwise op, reduction and convolution. Printed beside it: the
rate of a 4096^3 product (the library's best case), our whole step's time and,
with `--official_repo`, the official step's and the goal of 0.67x of it.
The steps (each after a warm-up step) and the two sweeps over the dots alternate
for `--rounds` rounds; each is reported as the median, with every round's time.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
import math
import os
import re
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import train_step
from lmdvit_jax import cli

FLAGS = flags.FLAGS

Shape = tuple[int, int, int, int]  # (b, m, k, n)


def _define_flags() -> None:
  flags.DEFINE_string('configs', 'lmdvit_small', 'configs.NAME of the step')
  flags.DEFINE_integer('patch', 256, 'square patch side')
  flags.DEFINE_integer('batch', 2, 'batch size')
  flags.DEFINE_integer('repeats', 5, 'timed calls per shape (median)')
  flags.DEFINE_integer(
    'rounds',
    3,
    'rounds of: our step, the official step (with '
    '--official_repo), then the step\'s dots in each library; medians '
    'are reported',
  )
  flags.DEFINE_string('official_repo', None, 'checkout of LeiaLi/LMD-ViT: also time its train step')


_DEF = re.compile(r'^\s*(?:ROOT\s+)?([\w.\-]+) = \w+\[([\d,]*)\]')
_DOT = re.compile(r' dot\(([\w.\-]+), ([\w.\-]+)\)(.*)$')


def _dims(text: str, key: str) -> list[int]:
  found = re.search(key + r'=\{([\d,]*)\}', text)
  return [int(d) for d in found.group(1).split(',') if d] if found else []


def dot_shapes(hlo: str) -> collections.Counter[Shape]:
  """The (b, m, k, n) of every `dot` in HLO text, with how often each occurs.

  b is the product of the batch dimensions, k of the contracting ones, m and n
  of the rest of each operand.
  """
  shapes = {}
  for line in hlo.splitlines():
    if found := _DEF.match(line):
      shapes[found.group(1)] = [int(d) for d in found.group(2).split(',') if d]
  counts: collections.Counter[Shape] = collections.Counter()
  for line in hlo.splitlines():
    if not (found := _DOT.search(line)):
      continue
    lhs, rhs, attrs = shapes[found.group(1)], shapes[found.group(2)], found.group(3)
    lb, lc = _dims(attrs, 'lhs_batch_dims'), _dims(attrs, 'lhs_contracting_dims')
    rb, rc = _dims(attrs, 'rhs_batch_dims'), _dims(attrs, 'rhs_contracting_dims')
    b = math.prod(lhs[d] for d in lb)
    k = math.prod(lhs[d] for d in lc)
    m = math.prod(s for d, s in enumerate(lhs) if d not in lb + lc)
    n = math.prod(s for d, s in enumerate(rhs) if d not in rb + rc)
    counts[(b, m, k, n)] += 1
  return counts


def flops(shape: Shape) -> int:
  b, m, k, n = shape
  return 2 * b * m * k * n


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
  run()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _operands(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  b, m, k, n = shape
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((b, m, k), np.float32), rng.standard_normal((b, k, n), np.float32))


def jax_timer(shape: Shape) -> Callable[[], object]:
  a, c = (jnp.asarray(x) for x in _operands(shape))
  product = jax.jit(jnp.matmul).lower(a, c).compile()
  return lambda: product(a, c).block_until_ready()


def torch_timer(torch, shape: Shape) -> Callable[[], object]:
  a, c = (torch.from_numpy(x) for x in _operands(shape))
  return lambda: torch.matmul(a, c)


def main(argv):
  del argv
  config = train_step.load_config(FLAGS.configs, FLAGS.patch, FLAGS.batch, 'float32', 'none')
  host = train_step.random_batch(FLAGS.batch, FLAGS.patch)
  ours, facts = train_step.ours(config, host)
  counts = dot_shapes(facts['lowered'].as_text(dialect='hlo'))

  libraries = {'jax': jax_timer}
  try:
    import torch

    libraries['torch'] = lambda shape: torch_timer(torch, shape)
  except ImportError:
    torch = None
  steps = {'our step': ours}
  if FLAGS.official_repo:
    steps["official step"] = train_step.official(FLAGS.official_repo, config, host)[0]
  if torch is not None:
    torch.set_num_threads(os.cpu_count() or 1)  # as the official step runs
  timers = {name: {shape: make(shape) for shape in counts} for name, make in libraries.items()}
  square = (1, 4096, 4096, 4096)
  square_timers = {name: make(square) for name, make in libraries.items()}

  def sweep(name):
    return sum(
      count * _median_seconds(timers[name][shape], FLAGS.repeats) for shape, count in counts.items()
    )

  rounds = collections.defaultdict(list)
  for _ in range(FLAGS.rounds):  # alternating: the steps, then each library's dots
    for name, run in steps.items():
      run()  # warm-up
      rounds[name].append(train_step.timed(run)[0])
    for name in libraries:
      rounds[name].append(sweep(name))
  best = {
    name: flops(square) / _median_seconds(square_timers[name], FLAGS.repeats) / 1e9
    for name in libraries
  }
  seconds = {name: statistics.median(times) for name, times in rounds.items()}

  dot_gflops = sum(flops(s) * c for s, c in counts.items()) / 1e9
  print(
    f'{FLAGS.configs}, {FLAGS.patch}x{FLAGS.patch}, batch {FLAGS.batch}, float32: '
    f'{sum(counts.values())} dots in {len(counts)} shapes, {dot_gflops:.1f} GFLOPs '
    f'of the step\'s {facts["gflops"]:.1f} (XLA cost analysis)'
  )
  for name in steps:
    print(f'{name}: {seconds[name]:.2f} s (rounds: {train_step.format_seconds(rounds[name])})')
  if 'official step' in seconds:
    print(f'goal, 0.67x of the official step: {0.67 * seconds["official step"]:.2f} s')
  print()
  print(
    "| library | the step's dots, each at its measured time (s; rounds) "
    '| their mean rate (GFLOP/s) | 4096^3 product (GFLOP/s) |'
  )
  print('| --- | --- | --- | --- |')
  for name in libraries:
    version = (torch if name == 'torch' else jax).__version__
    print(
      f'| {name} {version} | {seconds[name]:.2f} ({train_step.format_seconds(rounds[name])}) '
      f'| {dot_gflops / seconds[name]:.1f} | {best[name]:.1f} |'
    )


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
