r"""Training speed: our jitted train step, and the official PyTorch step beside it.

  python -m benchmarks.train_step                      # released and small, 256x256, batch 2
  python -m benchmarks.train_step --configs=tiny --patch=128 --steps=10
  python -m benchmarks.train_step --configs=lmdvit_small \
      --official_repo=/path/to/LMD-ViT                 # side by side (needs torch, einops)

Our step (forward, losses, backward, AdamW update, non-finite guard) is
compiled ahead of time, so the compile time is reported apart; then one warm-up
step runs and `--steps` steps are timed. Inputs are random images with a
random half-blurred mask; params come from `init_params`.

With `--official_repo` (a checkout of LeiaLi/LMD-ViT) and torch installed, the
official model of the same configuration is built too and trained in the same
process, in train mode (Gumbel decisions, stochastic depth): forward, L1 loss,
backward, AdamW. After one warm-up step each, the two steps alternate,
`--steps` rounds, and the table gives the median s/step of each, images/s,
the step's memory (the most resident memory a step added to the process,
sampled every 5 ms: "step RSS"), its minor page faults (fresh pages the
kernel mapped and zeroed), the CPU time the kernel spent meanwhile and our
time over theirs. With `--steps_per_turn=N` each framework runs N steps per
turn; the first of each turn, which follows the other framework's and starts
with the C library's free memory handed back to the kernel (for the step RSS
column), is printed apart, and the other columns give the later steps, run as
in a training loop (README, "Training speed"). Our step's loss has more terms
(L1, SSIM and FFT over the blur mask, the pruning cross-entropy): 5% of its
time, per `benchmarks/train_step_parts.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource
import statistics
import threading
import time
from typing import Callable

from absl import flags
import jax
import numpy as np

from benchmarks.common import import_official, load_config, random_batch
from lmdvit_jax import cli, inference, train_lib
from lmdvit_jax.models import count_params

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_list('configs', ['lmdvit', 'lmdvit_small'], 'configs.NAME of each row')
  flags.DEFINE_integer('patch', 256, 'square patch side')
  flags.DEFINE_integer('batch', 2, 'batch size')
  flags.DEFINE_integer('steps', 3, 'timed steps (rounds, when alternating)')
  flags.DEFINE_integer('steps_per_turn', 1,
                       'steps each framework runs in a row before the other takes its turn; '
                       'above 1, the first of each turn is timed apart and s/step is the '
                       'median of the others')
  flags.DEFINE_enum('dtype', 'float32', sorted(train_lib.COMPUTE_DTYPES), 'compute dtype')
  flags.DEFINE_enum('remat', 'none', sorted(train_lib.REMAT_POLICIES), 'rematerialisation')
  flags.DEFINE_string('official_repo', None,
                      'checkout of LeiaLi/LMD-ViT (model_hw.py): also time its train step')


class PeakRSS:
  """Highest resident set size of this process while inside the `with` block."""

  def __init__(self, interval: float = 0.005):
    self.interval, self.peak = interval, 0
    self._stop = threading.Event()

  @staticmethod
  def now() -> int:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

  def _watch(self):
    while not self._stop.wait(self.interval):
      self.peak = max(self.peak, self.now())

  def __enter__(self):
    self.peak = self.now()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self.now())


def ours(config, host: dict[str, np.ndarray]) -> tuple[Callable[[], None], dict]:
  """Compiles our train step; returns a function running one step (blocking) and facts
  (among them `lowered`, the step before compilation)."""
  mesh = train_lib.make_mesh()
  model = train_lib.build_model(config)
  tx = train_lib.make_optimizer(config)
  state = train_lib.init_train_state(model, tx, config, mesh)
  data = train_lib.put_batch(host, mesh)
  step = train_lib.make_train_step(model, tx, config, mesh)
  t0 = time.perf_counter()
  lowered = step.lower(state, data)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  xla_gib = inference.compiled_memory(compiled) / 2**30
  holder = {'state': state}

  def run():
    holder['state'], metrics = compiled(holder['state'], data)
    jax.block_until_ready(metrics)

  return run, dict(params=count_params(state.params), compile_s=compile_s, xla_gib=xla_gib,
                   gflops=compiled.cost_analysis()['flops'] / 1e9, lowered=lowered)


def official(repo: str, config, host: dict[str, np.ndarray]) -> tuple[Callable[[], None], dict]:
  """The official model of `config`'s architecture, one train step per call."""
  torch, model_hw = import_official(repo)
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  m = config.model
  # img_size 512: every stage keeps win_size windows with shifts, as ours (FACTS.md).
  net = model_hw.LMD(img_size=512, embed_dim=m.embed_dim, win_size=m.win_size,
                     token_projection='linear', token_mlp='lefflocal', depths=list(m.depths),
                     num_heads=list(m.num_heads), mlp_ratio=m.mlp_ratio, modulator=m.modulator,
                     dd_in=3, drop_path_rate=m.drop_path_rate,
                     prune_loc=list(m.prune_loc)).train()
  opt = torch.optim.AdamW(net.parameters(), lr=float(config.optim.lr),
                          weight_decay=float(config.optim.weight_decay))
  to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  blur, sharp = to_nchw(host['blur']), to_nchw(host['sharp'])

  def run():
    opt.zero_grad(set_to_none=True)
    restored = net(blur)[0]
    loss = (restored - sharp).abs().mean()
    loss.backward()
    opt.step()

  return run, dict(params=sum(p.numel() for p in net.parameters()), version=torch.__version__)


def timed(run: Callable[[], None], trim: bool = True) -> tuple[float, int, int, float]:
  """Seconds of one `run()`, the resident memory it added at its peak (bytes), the
  minor page faults it took (fresh pages the kernel had to map and zero) and the
  CPU seconds the kernel spent for the process meanwhile (system time).

  `trim`: first hand the C library's free memory back to the kernel, which the
  memory figure needs (memory the library still holds would hide the step's own
  demand) but which makes the step fetch it again.
  """
  if trim and platform.libc_ver()[0] == 'glibc':
    ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim(0)
  before = PeakRSS.now()
  usage = resource.getrusage(resource.RUSAGE_SELF)
  with PeakRSS() as rss:
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_SELF)
  return (seconds, rss.peak - before, after.ru_minflt - usage.ru_minflt,
          after.ru_stime - usage.ru_stime)


def format_seconds(times: list[float]) -> str:
  """'1.23, 4.56 s'."""
  return ', '.join(f'{t:.2f}' for t in times) + ' s'


def bench(name: str, args) -> list[dict]:
  config = load_config(name, args.patch, args.batch, args.dtype, args.remat)
  host = random_batch(args.batch, args.patch)
  runs = {'ours': ours(config, host)}
  if args.official_repo:
    runs['official'] = official(args.official_repo, config, host)
  steps = {k: [] for k in runs}  # (position in its turn, timed(...)) of every step
  for k, (run, _) in runs.items():  # warm-up
    run()
  for _ in range(args.steps):  # alternate
    for k, (run, _) in runs.items():
      for position in range(args.steps_per_turn):
        # With several steps per turn, memory is measured on the first of each and
        # the others run as in a training loop, on the memory the one before left.
        steps[k].append((position, timed(run, trim=position == 0)))
  rows, s_per_step = [], {}
  for k, (_, facts) in runs.items():
    # Columns: (seconds, peak, faults, kernel CPU) of the steps the table gives.
    table = [r for p, r in steps[k] if p > 0 or args.steps_per_turn == 1]
    seconds, _, faults, kernel = (statistics.median(column) for column in zip(*table))
    peak = max(r[1] for p, r in steps[k] if p == 0)
    s_per_step[k] = seconds
    rows.append(dict(config=name, framework=k, patch=args.patch, batch=args.batch,
                     dtype=args.dtype if k == 'ours' else 'float32',
                     remat=args.remat if k == 'ours' else 'none', s_per_step=seconds,
                     images_per_s=args.batch / seconds, step_rss_gib=peak / 2**30,
                     faults=faults, kernel_s=kernel, **facts))
    if args.steps_per_turn > 1:
      firsts = [r for p, r in steps[k] if p == 0]
      print(f'{name}, {k}: first step of each turn {format_seconds([r[0] for r in firsts])} '
            f'(kernel CPU {format_seconds([r[3] for r in firsts])}), the others '
            f'{format_seconds([r[0] for r in table])} '
            f'(kernel CPU {format_seconds([r[3] for r in table])})', flush=True)
  if 'official' in s_per_step:
    rows[0]['ratio'] = s_per_step['ours'] / s_per_step['official']
  return rows


def main(argv):
  del argv
  args = FLAGS
  if args.official_repo and not os.path.isfile(os.path.join(args.official_repo, 'model_hw.py')):
    raise FileNotFoundError(f'no model_hw.py in --official_repo={args.official_repo}')
  print(f'jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}')
  header = ('| config | framework | params | patch | batch | dtype | remat | compile s '
            '| XLA buffers GiB | step RSS GiB | page faults/step | kernel CPU s/step | s/step '
            '| images/s | ours / official |')
  rows = []
  for name in args.configs:
    for r in bench(name, args):
      compile_s = f"{r['compile_s']:.1f}" if 'compile_s' in r else '-'
      xla = f"{r['xla_gib']:.1f}" if 'xla_gib' in r else '-'
      framework = r['framework'] if 'version' not in r else f"official (torch {r['version']})"
      ratio = f"{r['ratio']:.2f}" if 'ratio' in r else '-'
      rows.append(f"| {r['config']} | {framework} | {r['params'] / 1e6:.2f} M | {r['patch']} "
                  f"| {r['batch']} | {r['dtype']} | {r['remat']} | {compile_s} | {xla} "
                  f"| {r['step_rss_gib']:.1f} | {r['faults'] / 1e6:.2f} M | {r['kernel_s']:.2f} "
                  f"| {r['s_per_step']:.2f} "
                  f"| {r['images_per_s']:.3f} | {ratio} |")
      print(rows[-1].replace('|', ' ').strip(), flush=True)
  print('\n' + header + '\n|' + ' --- |' * 15 + '\n' + '\n'.join(rows))


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
