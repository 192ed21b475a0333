r"""Where the time of pruned inference goes, by part: ours, and the official model's.

    python -m benchmarks.inference_parts --sizes=512,1536x2176 \
        [--official_repo=/path/to/LMD-ViT --official_python=/path/to/torchenv/bin/python]

The released configuration, random weights, one image, a quarter of the windows
kept in every pruning block (`--kept`). Ours: the fixed budget `--kept` with
predictors that keep every window (so each block runs exactly that share, the
program of `benchmarks.inference`'s budget rows), timed (median of `--repeats`
after a warm-up), then one run profiled with `jax.profiler`, each HLO op's time
summed by the part its metadata names (the flax module path, and the named
scopes of the window gather and scatter). The official model: the same
configuration and share (`benchmarks.pytorch_reference --profile`, in its own
process), its module calls wrapped in `torch.profiler.record_function`.

Parts: convolutions and resampling (input and output projections, down- and
up-sampling), confidence predictors, window gather and scatter (ours; the
official model's boolean indexing falls in "the rest"), attention (W-MSA),
feed-forward (W-LeFF), LayerNorms of the blocks, and the rest (window
partition, shifts, keep multiplies, residuals; what no part names). Parts are
the profiled run's shares, applied to the median run time (so they add up to
it); the official model's "rest" is its run time less its named parts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import keep_all, op_times
from benchmarks.inference import compile_program, parse_size
from configs import lmdvit as lmdvit_config
from lmdvit_jax import cli
from lmdvit_jax.models import LMDViT, init_params

FLAGS = flags.FLAGS
PARTS = (
  'convolutions and resampling',
  'confidence predictors',
  'window gather and scatter',
  'attention (W-MSA)',
  'feed-forward (W-LeFF)',
  'LayerNorms',
  'the rest',
)


def _define_flags() -> None:
  flags.DEFINE_string('sizes', '512,1536x2176', 'HxW or S, multiples of 128, comma separated')
  flags.DEFINE_float('kept', 0.25, 'share of windows every pruning block runs')
  flags.DEFINE_integer('repeats', 3, 'timed runs')
  flags.DEFINE_string('official_repo', None, 'a checkout of LeiaLi/LMD-ViT: profile it too')
  flags.DEFINE_string('official_python', sys.executable, 'Python with torch for it')


def part_of(op_name: str) -> str:
  """Which part an HLO op belongs to, from its metadata's op_name."""
  for key, part in (
    ('predictor', 'confidence predictors'),
    ('gather_windows', 'window gather and scatter'),
    ('scatter_windows', 'window gather and scatter'),
    ('/attn/', 'attention (W-MSA)'),
    ('/mlp/', 'feed-forward (W-LeFF)'),
    ('/norm1', 'LayerNorms'),
    ('/norm2', 'LayerNorms'),
    ('input_proj', 'convolutions and resampling'),
    ('output_proj', 'convolutions and resampling'),
    ('downsample', 'convolutions and resampling'),
    ('upsample', 'convolutions and resampling'),
  ):
    if key in op_name:
      return part
  return 'the rest'


def profile_parts(compiled, args) -> dict[str, float]:
  """Milliseconds of op time per part in one profiled run of `compiled(*args)`."""
  parts = dict.fromkeys(PARTS, 0.0)
  with tempfile.TemporaryDirectory() as trace_dir:
    for _, op_name, ms in op_times(compiled, args, trace_dir):
      parts[part_of(op_name)] += ms
  return parts


def ours(h: int, w: int) -> dict:
  """Seconds and per-part milliseconds of our pruned program on one h x w image."""
  cfg = dict(lmdvit_config.get_config().model)
  model = LMDViT(**cfg, capacity=FLAGS.kept)
  params = keep_all(model, init_params(model, 0))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, h, w, 3)), jnp.float32)
  program = compile_program(model, params, x)
  compiled = program['compiled']
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - t0)
  parts = profile_parts(compiled, (params, x))
  # Ops overlap across threads: scale the parts to the measured run time.
  seconds = float(np.median(times))
  scale = 1e3 * seconds / max(sum(parts.values()), 1e-9)
  return {'seconds': seconds, 'parts_ms': {k: v * scale for k, v in parts.items()}}


def official(h: int, w: int) -> dict:
  cmd = [
    FLAGS.official_python,
    '-m',
    'benchmarks.pytorch_reference',
    f'--official_repo={FLAGS.official_repo}',
    '--profile',
    f'--size={h}x{w}',
    f'--kept={FLAGS.kept}',
    f'--repeats={FLAGS.repeats}',
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def table(rows: dict[str, dict]) -> str:
  names = list(rows)
  lines = [
    '| part | ' + ' | '.join(f'{n}: ms (share)' for n in names) + ' |',
    '|' + ' --- |' * (len(names) + 1),
  ]
  for part in PARTS:
    cells = []
    for n in names:
      ms, total = rows[n]['parts_ms'].get(part, 0.0), 1e3 * rows[n]['seconds']
      cells.append(f'{ms:.0f} ({100 * ms / total:.0f}%)')
    lines.append(f'| {part} | ' + ' | '.join(cells) + ' |')
  lines.append(
    '| whole run | ' + ' | '.join(f'{1e3 * rows[n]["seconds"]:.0f}' for n in names) + ' |'
  )
  return '\n'.join(lines)


def main(argv):
  del argv
  print(f'jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}')
  for size in FLAGS.sizes.split(','):
    h, w = parse_size(size)
    rows = {'ours': ours(h, w)}
    if FLAGS.official_repo:
      rows['official'] = official(h, w)
    print(f'\n{h}x{w}, {FLAGS.kept:g} of the windows kept, released configuration:\n')
    print(table(rows), flush=True)
    if 'official' in rows:
      ratio = rows['ours']['seconds'] / rows['official']['seconds']
      print(f'\nours / official: {ratio:.2f}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
