r"""Where the time of a training step goes: its parts, forward and backward.

    python -m benchmarks.train_step_parts                       # lmdvit_small, 256x256, batch 2
    python -m benchmarks.train_step_parts --config=lmdvit --dtype=bfloat16

Each part is jit-compiled on its own as forward + backward (the gradient of a
random projection of its output with respect to its inputs and params) at the
shapes it has inside the full step, timed (median of --repeats after a
warm-up) and read with XLA's cost analysis (FLOPs, bytes accessed) and memory
analysis (temporaries). Rows:

* the whole compiled train step (forward, losses, backward, AdamW);
* each of the 9 stages (its Transformer blocks, predictors and window shifts);
* one block's pieces at the full-resolution stage: LayerNorm, W-MSA, the
  W-LeFF linear layers and its depthwise 3x3, the confidence predictor,
  window partition + roll + reverse;
* the losses and the AdamW update.

With `--trace_dir`, one run of the whole compiled step is also recorded with
`jax.profiler` and its HLO ops' times are summed by what they belong to (the
flax module path in each op's metadata: depthwise 3x3, W-MSA parts, LayerNorm,
predictor, losses ...), forward and backward apart: a second table.
"""

from __future__ import annotations

import collections
import re
import statistics
import time
from typing import Any, NamedTuple

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import load_config, op_times, random_batch
from lmdvit_jax import cli, losses, train_lib
from lmdvit_jax.models import lmdvit, pruning
from lmdvit_jax.models import windows as win
from lmdvit_jax.models.attention import WindowAttention
from lmdvit_jax.models.feedforward import DepthwiseConv3x3Reflect, gelu

FLAGS = flags.FLAGS


class _Outputs(NamedTuple):
  restored: jax.Array
  scores: tuple


def _define_flags() -> None:
  flags.DEFINE_string('config', 'lmdvit_small', 'configs.NAME')
  flags.DEFINE_integer('size', 256, 'square patch side')
  flags.DEFINE_integer('batch', 2, 'batch size')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype')
  flags.DEFINE_integer('repeats', 3, 'timed runs per part')
  flags.DEFINE_string('trace_dir', None, 'also profile one whole step into this directory')


def measure(fn, *args, repeats: int = 3) -> dict[str, Any]:
  """Compiles `fn(*args)`, times it (median), reads XLA's cost and memory analysis;
  the compiled program is returned too (`compiled`)."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  mem = compiled.memory_analysis()
  return dict(
    ms=1e3 * statistics.median(times),
    gflops=cost.get('flops', np.nan) / 1e9,
    gbytes=cost.get('bytes accessed', np.nan) / 1e9,
    temp_gib=mem.temp_size_in_bytes / 2**30 if mem else np.nan,
    compiled=compiled,
  )


def _component(op_name: str) -> str:
  """What an HLO op belongs to, from its metadata's op_name (a flax module path)."""
  path = re.sub(r'\b(jit|jvp|transpose|checkpoint|remat)\(', '', op_name).replace(')', '')
  for key, label in (
    ('dwconv', 'W-LeFF depthwise 3x3'),
    ('predictor', 'confidence predictor'),
    ('/attn/', 'W-MSA'),
    ('/mlp/', 'W-LeFF linears + GELUs'),
    ('/norm', 'LayerNorm'),
    ('ssim', 'loss: SSIM'),
    ('fft', 'loss: FFT'),
    ('block_', 'block: residuals, keep multiply'),
    ('coder_', 'stage: roll, partition, decisions'),
    ('bottleneck', 'stage: roll, partition, decisions'),
    ('LMDViT', 'convolutions, up/down-sampling'),
  ):
    if key in path:
      return label
  return 'losses, optimizer, other'


def trace_table(
  compiled, args, trace_dir: str
) -> tuple[list[tuple[str, float, float]], list[tuple[str, float]]]:
  """Profiles one run of `compiled(*args)`: per component (forward ms, backward
  ms), and per kind of HLO op (`ynn_fusion`, `copy_bitcast_fusion`, ...: the op's
  name without its number) the ms of op time."""
  total = collections.defaultdict(lambda: [0.0, 0.0])
  kinds: collections.Counter = collections.Counter()
  for op, op_name, ms in op_times(compiled, args, trace_dir):
    total[_component(op_name)]['transpose(' in op_name] += ms
    kinds[re.sub(r'\.\d+$', '', op)] += ms
  return (
    sorted(((k, f, b) for k, (f, b) in total.items()), key=lambda r: -(r[1] + r[2])),
    kinds.most_common(),
  )


def fwd_bwd(apply, params, *inputs):
  """`(params, inputs) -> grads` of a random projection of `apply`'s output."""
  out = jax.eval_shape(apply, params, *inputs)
  probe = jax.tree.map(
    lambda s: jnp.asarray(np.random.default_rng(0).standard_normal(s.shape), s.dtype), out
  )

  def loss(p, *xs):
    y = apply(p, *xs)
    return sum(
      jnp.vdot(a.astype(jnp.float32), b.astype(jnp.float32))
      for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(probe))
    )

  return lambda p, *xs: jax.grad(loss, argnums=tuple(range(1 + len(xs))))(p, *xs)


def module_part(module: nn.Module, *inputs, rngs=None, **kwargs):
  params = module.init({'params': jax.random.PRNGKey(0), **(rngs or {})}, *inputs, **kwargs)
  apply = lambda p, *xs: module.apply(p, *xs, rngs=rngs, **kwargs)
  return fwd_bwd(apply, params, *inputs), params


def main(argv):
  del argv
  config = load_config(FLAGS.config, FLAGS.size, FLAGS.batch, FLAGS.dtype, 'none')
  model = train_lib.build_model(config)
  dtype, b, s, c, ws = model.dtype, FLAGS.batch, FLAGS.size, model.embed_dim, model.win_size
  rng = np.random.default_rng(0)
  rngs = {'gumbel': jax.random.PRNGKey(1), 'dropout': jax.random.PRNGKey(2)}
  rows = []

  def add(name, fn, *args):
    rows.append((name, measure(fn, *args, repeats=FLAGS.repeats)))
    print(f'{name}: {rows[-1][1]["ms"]:.1f} ms', flush=True)

  def add_module(name, module, *inputs, **kwargs):
    fn, params = module_part(module, *inputs, **kwargs)
    add(name, fn, params, *inputs)

  # The whole step.
  mesh = train_lib.make_mesh()
  tx = train_lib.make_optimizer(config)
  state = train_lib.init_train_state(model, tx, config, mesh)
  batch = train_lib.put_batch(random_batch(b, s), mesh)
  step = lambda st, bt: train_lib.train_step(st, bt, model=model, tx=tx, config=config)
  add('whole train step', step, state, batch)
  traced, kinds = None, None
  if FLAGS.trace_dir:
    traced, kinds = trace_table(rows[0][1]['compiled'], (state, batch), FLAGS.trace_dir)

  # Stages at their input shapes.
  dpr = lmdvit.drop_path_rates(model.depths, model.drop_path_rate)
  widths = [c * 2**i for i in range(5)] + [2 * c * 2 ** (3 - j) for j in range(4)]
  sides = [s // 2**i for i in range(5)] + [s // 2 ** (3 - j) for j in range(4)]
  for i, name in enumerate(lmdvit.STAGE_NAMES):
    stage = lmdvit.AdaWPTStage(
      widths[i],
      model.depths[i],
      model.num_heads[i],
      ws,
      model.mlp_ratio,
      modulator=model.modulator and i > 4,
      prune=bool(model.prune_loc[i]),
      drop_path=dpr[i],
      capacity='masked',
      dtype=dtype,
    )
    x = jnp.asarray(rng.random((b, sides[i], sides[i], widths[i])), jnp.float32)
    add_module(
      f'stage {name} ({model.depths[i]} blocks, {sides[i]}x{sides[i]}x{widths[i]})',
      stage,
      x,
      rngs=rngs,
      train=True,
    )

  # One block's pieces at full resolution.
  n = b * (s // ws) ** 2
  wins = jnp.asarray(rng.random((n, ws, ws, c)), jnp.float32)
  tokens = wins.reshape(n, ws * ws, c)
  fmap = jnp.asarray(rng.random((b, s, s, c)), jnp.float32)
  hidden = int(c * model.mlp_ratio)
  norm = nn.LayerNorm(epsilon=pruning.LN_EPS, use_fast_variance=False)
  add_module('  LayerNorm', norm, wins)
  add_module('  W-MSA', WindowAttention(c, model.num_heads[0], ws, dtype=dtype), tokens)

  class LeFFLinears(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = gelu(nn.Dense(hidden, dtype=dtype)(x))
      return nn.Dense(c, dtype=dtype)(gelu(h))

  add_module('  W-LeFF linears + GELUs', LeFFLinears(), wins)
  add_module(
    '  W-LeFF depthwise 3x3 (reflect)',
    DepthwiseConv3x3Reflect(hidden),
    jnp.asarray(rng.random((n, ws, ws, hidden)), dtype),
  )
  add_module('  confidence predictor', pruning.ConfidencePredictor(c), fmap)
  add(
    '  partition + roll + reverse',
    fwd_bwd(
      lambda p, x: win.roll(
        win.reverse(win.partition(win.roll(x, -ws // 2), ws), ws, s, s), ws // 2
      ),
      {},
      fmap,
    ),
    {},
    fmap,
  )

  # Losses and the optimizer.
  out = jax.eval_shape(
    lambda p, x: model.apply({'params': p}, x, train=True, rngs=rngs), state.params, batch['blur']
  )
  scores = tuple(jnp.zeros(o.shape, jnp.float32) for o in out.scores)
  weights, fft_mode, hard, balanced = train_lib._loss_settings(config)

  def loss_apply(p, restored, sc):
    del p
    value, _ = losses.total_loss(_Outputs(restored, sc), batch, weights, fft_mode, hard, balanced)
    return value

  add(
    'losses (L1, SSIM, FFT, pruning)',
    fwd_bwd(loss_apply, {}, batch['sharp'], scores),
    {},
    batch['sharp'],
    scores,
  )
  update = lambda p, g, o: tx.update(g, o, p)
  grads = jax.tree.map(jnp.ones_like, state.params)
  add('AdamW update', jax.jit(update), state.params, grads, state.opt_state)

  total = rows[0][1]['ms']
  print(
    f'\n{FLAGS.config}, {s}x{s}, batch {b}, {FLAGS.dtype}; jax {jax.__version__} on '
    f'{jax.device_count()} x {jax.devices()[0].device_kind}; forward + backward per part\n'
  )
  print('| part | ms | share of the step | XLA GFLOPs | GB accessed | temp GiB |')
  print('| --- | --- | --- | --- | --- | --- |')
  for name, r in rows:
    print(
      f'| {name} | {r["ms"]:.1f} | {100 * r["ms"] / total:.1f}% | {r["gflops"]:.1f} | '
      f'{r["gbytes"]:.2f} | {r["temp_gib"]:.2f} |'
    )
  if traced:
    op_total = sum(f + b for _, f, b in traced)
    print(
      f'\nOne profiled step ({FLAGS.trace_dir}): HLO op time by what the op belongs to '
      f'({op_total / 1e3:.2f} s of op time over all threads)\n'
    )
    print('| component | forward ms | backward ms | share |')
    print('| --- | --- | --- | --- |')
    for name, f, b in traced:
      print(f'| {name} | {f:.0f} | {b:.0f} | {100 * (f + b) / op_total:.1f}% |')
    print('\nThe same op time by kind of HLO op (the ten largest)\n')
    print('| HLO op kind | ms | share |')
    print('| --- | --- | --- |')
    for kind, ms in kinds[:10]:
      print(f'| {kind} | {ms:.0f} | {100 * ms / op_total:.1f}% |')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
