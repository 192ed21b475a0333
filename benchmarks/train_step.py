r"""Training speed: our jitted train step, and the official PyTorch step beside it.

  python -m benchmarks.train_step                      # released and small, 256x256, batch 2
  python -m benchmarks.train_step --configs=tiny --patch=128 --steps=10
  python -m benchmarks.train_step --configs=lmdvit_small,lmdvit --remat=blocks \
      --capacities=dense,0.5,0.25 --official_repo=/path/to/LMD-ViT \
      --official_python=/tmp/torchenv/bin/python       # the headline: own processes

By default (`--mode=separate`) every row runs in its own process, one after
another, as a user runs either framework: ours at each `--capacities`
(`train_capacity`: 'dense', or pruned training at a kept fraction), then the
official step (in `--official_python`, an environment with torch and einops;
jax is not needed there). The table gives the median s/step, the process's
peak resident memory and the ratios. `--mode=alternate` runs both in this
process, step by step, with the columns below (each pays to fault back memory
the other freed: not how a user runs them; labelled so in the docs).

Our step (forward, losses, backward, AdamW update, non-finite guard) is
compiled ahead of time, so the compile time is reported apart; then one warm-up
step runs and `--steps` steps are timed. Inputs are random images with a
random half-blurred mask; params come from `init_params`.

In `--mode=alternate`, with `--official_repo` (a checkout of LeiaLi/LMD-ViT) and
torch installed, the official model of the same configuration is built too and
trained in the same process, in train mode (Gumbel decisions, stochastic depth): forward, L1 loss,
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

from collections.abc import Callable
import ctypes
import ctypes.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time

from absl import flags
import jax
import numpy as np

from benchmarks.common import cpu_model, load_config, random_batch
from benchmarks.pytorch_reference import official_train_step
from lmdvit_jax import cli, programs, train_lib
from lmdvit_jax.models import count_params, pruning

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_list('configs', ['lmdvit', 'lmdvit_small'], 'configs.NAME of each row')
  flags.DEFINE_integer('patch', 256, 'square patch side')
  flags.DEFINE_integer('batch', 2, 'batch size')
  flags.DEFINE_integer('steps', 3, 'timed steps (rounds, when alternating)')
  flags.DEFINE_integer(
    'steps_per_turn',
    1,
    'steps each framework runs in a row before the other takes its turn; '
    'above 1, the first of each turn is timed apart and s/step is the '
    'median of the others',
  )
  flags.DEFINE_enum('dtype', 'float32', sorted(train_lib.COMPUTE_DTYPES), 'compute dtype')
  flags.DEFINE_enum('remat', 'none', sorted(train_lib.REMAT_POLICIES), 'rematerialisation')
  flags.DEFINE_string(
    'official_repo', None, 'checkout of LeiaLi/LMD-ViT (model_hw.py): also time its train step'
  )
  flags.DEFINE_list(
    'capacities',
    ['dense'],
    "our step's train_capacity per row: 'dense' or a kept fraction in (0, 1]",
  )
  flags.DEFINE_enum(
    'mode',
    'separate',
    ['separate', 'alternate'],
    'separate: every row in its own process, one after another, as users run '
    'them (peak RSS of each process); alternate: both frameworks in this '
    'process, step by step (step RSS, page faults)',
  )
  flags.DEFINE_string(
    'official_python',
    sys.executable,
    'Python with torch and einops for the official rows (separate mode); jax is not needed there',
  )
  flags.DEFINE_string(
    'row', None, 'internal: CONFIG:CAPACITY, one row of ours in this process, printed as JSON'
  )


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
  xla_gib = programs.compiled_memory(compiled) / 2**30
  holder = {'state': state}

  def run():
    holder['state'], metrics = compiled(holder['state'], data)
    jax.block_until_ready(metrics)

  return run, dict(
    params=count_params(state.params),
    compile_s=compile_s,
    xla_gib=xla_gib,
    gflops=compiled.cost_analysis()['flops'] / 1e9,
    lowered=lowered,
  )


def official(repo: str, config, host: dict[str, np.ndarray]) -> tuple[Callable[[], None], dict]:
  """The official model of `config`'s architecture, one train step per call."""
  return official_train_step(
    repo,
    _arch(config),
    host,
    lr=float(config.optim.lr),
    weight_decay=float(config.optim.weight_decay),
  )


def _arch(config) -> dict:
  """The architecture of `config.model` as the official model takes it."""
  m = config.model
  return dict(
    embed_dim=m.embed_dim,
    win_size=m.win_size,
    depths=list(m.depths),
    num_heads=list(m.num_heads),
    mlp_ratio=m.mlp_ratio,
    modulator=m.modulator,
    drop_path_rate=m.drop_path_rate,
    prune_loc=list(m.prune_loc),
  )


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
  return (
    seconds,
    rss.peak - before,
    after.ru_minflt - usage.ru_minflt,
    after.ru_stime - usage.ru_stime,
  )


def format_seconds(times: list[float]) -> str:
  """'1.23, 4.56 s'."""
  return ', '.join(f'{t:.2f}' for t in times) + ' s'


def _config(name: str, capacity: str, args):
  config = load_config(name, args.patch, args.batch, args.dtype, args.remat)
  config.train_capacity = capacity
  return config


def one_row(spec: str, args) -> dict:
  """`--row=CONFIG:CAPACITY`: our step alone in this process; median of `--steps` after one."""
  name, capacity = spec.split(':')
  run, facts = ours(_config(name, capacity, args), random_batch(args.batch, args.patch))
  facts.pop('lowered')
  run()
  times = [timed(run, trim=False)[0] for _ in range(args.steps)]
  return dict(s_per_step=statistics.median(times), times=times, **facts)


def _child(cmd: list[str]) -> dict:
  """Runs `cmd` (printing one JSON line last); its result, with the process's
  peak resident memory (`peak_rss_gib`, from the kernel's accounting)."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f'{" ".join(cmd[:6])} ... failed (exit {status}); output:\n{out[-2000:]}')
  result = json.loads(out.strip().splitlines()[-1])
  return {**result, 'peak_rss_gib': usage.ru_maxrss * 1024 / 2**30}


def separate(args) -> list[dict]:
  """Each row in its own process, one after another: ours per capacity, then
  the official step (in `--official_python`)."""
  rows = []
  common = [
    f'--patch={args.patch}',
    f'--batch={args.batch}',
    f'--steps={args.steps}',
    f'--dtype={args.dtype}',
    f'--remat={args.remat}',
  ]
  for name in args.configs:
    first = len(rows)
    for capacity in args.capacities:
      r = _child(
        [sys.executable, '-m', 'benchmarks.train_step', f'--row={name}:{capacity}', *common]
      )
      rows.append(dict(config=name, framework='ours', capacity=capacity, **r))
      print(_row_line(rows[-1]), flush=True)
    if args.official_repo:
      arch = json.dumps(_arch(load_config(name, args.patch, args.batch, 'float32', 'none')))
      r = _child(
        [
          args.official_python,
          '-m',
          'benchmarks.pytorch_reference',
          '--train',
          f'--official_repo={args.official_repo}',
          f'--size={args.patch}',
          f'--batch={args.batch}',
          f'--repeats={args.steps}',
          f'--arch={arch}',
        ]
      )
      rows.append(
        dict(
          config=name,
          framework=f'official (torch {r.pop("version")})',
          capacity='dense (Gumbel)',
          **r,
        )
      )
      print(_row_line(rows[-1]), flush=True)
    mine = rows[first : first + len(args.capacities)]
    dense = next((r['s_per_step'] for r in mine if r['capacity'] == 'dense'), None)
    theirs = rows[-1]['s_per_step'] if args.official_repo else None
    for r in mine:
      r['vs_dense'] = r['s_per_step'] / dense if dense else None
      r['vs_official'] = r['s_per_step'] / theirs if theirs else None
  return rows


def _row_line(r: dict) -> str:
  return ' '.join(
    f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
    for k, v in r.items()
    if k not in ('times',)
  )


def separate_table(rows: list[dict], args) -> str:
  fmt = lambda v, d=2: '-' if v is None else f'{v:.{d}f}'
  lines = [
    '| config | framework | train_capacity | s/step | images/s | peak RSS GiB | '
    'compile s | ours / our dense | ours / official |',
    '|' + ' --- |' * 9,
  ]
  for r in rows:
    lines.append(
      f"| {r['config']} | {r['framework']} | {r['capacity']} | "
      f"{r['s_per_step']:.2f} | {args.batch / r['s_per_step']:.3f} | "
      f"{r['peak_rss_gib']:.1f} | {fmt(r.get('compile_s'), 1)} | "
      f"{fmt(r.get('vs_dense'))} | {fmt(r.get('vs_official'))} |"
    )
  return '\n'.join(lines)


def bench(name: str, args) -> list[dict]:
  config = load_config(name, args.patch, args.batch, args.dtype, args.remat)
  config.train_capacity = args.capacities[0]
  host = random_batch(args.batch, args.patch)
  runs = {'ours': ours(config, host)}
  if args.official_repo:
    runs['official'] = official(args.official_repo, config, host)
  steps = {k: [] for k in runs}  # (position in its turn, timed(...)) of every step
  for run, _ in runs.values():  # warm-up
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
    rows.append(
      dict(
        config=name,
        framework=k,
        patch=args.patch,
        batch=args.batch,
        dtype=args.dtype if k == 'ours' else 'float32',
        remat=args.remat if k == 'ours' else 'none',
        s_per_step=seconds,
        images_per_s=args.batch / seconds,
        step_rss_gib=peak / 2**30,
        faults=faults,
        kernel_s=kernel,
        **facts,
      )
    )
    if args.steps_per_turn > 1:
      firsts = [r for p, r in steps[k] if p == 0]
      print(
        f'{name}, {k}: first step of each turn {format_seconds([r[0] for r in firsts])} '
        f'(kernel CPU {format_seconds([r[3] for r in firsts])}), the others '
        f'{format_seconds([r[0] for r in table])} '
        f'(kernel CPU {format_seconds([r[3] for r in table])})',
        flush=True,
      )
  if 'official' in s_per_step:
    rows[0]['ratio'] = s_per_step['ours'] / s_per_step['official']
  return rows


def main(argv):
  del argv
  args = FLAGS
  for capacity in args.capacities:
    pruning.parse_train_capacity(capacity)
  if args.row:
    print(json.dumps(one_row(args.row, args)), flush=True)
    return
  if args.official_repo and not os.path.isfile(os.path.join(args.official_repo, 'model_hw.py')):
    raise FileNotFoundError(f'no model_hw.py in --official_repo={args.official_repo}')
  print(
    f'jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, {cpu_model()}'
  )
  if args.mode == 'separate':
    rows = separate(args)
    print(
      f'\n{args.patch}x{args.patch}, batch {args.batch}, {args.dtype}, remat {args.remat}; '
      f'median of {args.steps} steps after one, each row in its own process\n'
    )
    print(separate_table(rows, args))
    return
  header = (
    '| config | framework | params | patch | batch | dtype | remat | compile s '
    '| XLA buffers GiB | step RSS GiB | page faults/step | kernel CPU s/step | s/step '
    '| images/s | ours / official |'
  )
  rows = []
  for name in args.configs:
    for r in bench(name, args):
      compile_s = f"{r['compile_s']:.1f}" if 'compile_s' in r else '-'
      xla = f"{r['xla_gib']:.1f}" if 'xla_gib' in r else '-'
      framework = r['framework'] if 'version' not in r else f"official (torch {r['version']})"
      ratio = f"{r['ratio']:.2f}" if 'ratio' in r else '-'
      rows.append(
        f"| {r['config']} | {framework} | {r['params'] / 1e6:.2f} M | {r['patch']} "
        f"| {r['batch']} | {r['dtype']} | {r['remat']} | {compile_s} | {xla} "
        f"| {r['step_rss_gib']:.1f} | {r['faults'] / 1e6:.2f} M | {r['kernel_s']:.2f} "
        f"| {r['s_per_step']:.2f} "
        f"| {r['images_per_s']:.3f} | {ratio} |"
      )
      print(rows[-1].replace('|', ' ').strip(), flush=True)
  print('\n' + header + '\n|' + ' --- |' * 15 + '\n' + '\n'.join(rows))


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
