"""Training speed: compile time, steps/s and images/s of the jitted train step.

  python benchmarks/train_step.py                      # released and small, 256x256, batch 2
  python benchmarks/train_step.py --configs=tiny --patch=128 --steps=10

Each configuration's step (forward, backward, AdamW update, non-finite guard)
is compiled ahead of time, so the compile time is reported apart; then one
warm-up step runs and `--steps` steps are timed. Inputs are random images with
a random half-blurred mask; params come from `init_params`.
"""

from __future__ import annotations

import importlib
import time

from absl import flags
import jax
import numpy as np

from lmdvit_jax import cli, train_lib
from lmdvit_jax.models import count_params

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_list('configs', ['lmdvit', 'lmdvit_small'], 'configs.NAME of each row')
  flags.DEFINE_integer('patch', 256, 'square patch side')
  flags.DEFINE_integer('batch', 2, 'batch size')
  flags.DEFINE_integer('steps', 3, 'timed steps')
  flags.DEFINE_enum('dtype', 'float32', sorted(train_lib.COMPUTE_DTYPES), 'compute dtype')
  flags.DEFINE_enum('remat', 'none', sorted(train_lib.REMAT_POLICIES), 'rematerialisation')


def bench(name: str, patch: int, batch: int, steps: int, dtype: str, remat: str) -> dict:
  config = importlib.import_module(f'configs.{name}').get_config()
  with config.unlocked():
    config.update(patch_size=patch, batch_size=batch, compute_dtype=dtype, remat=remat)
  mesh = train_lib.make_mesh()
  model = train_lib.build_model(config)
  tx = train_lib.make_optimizer(config)
  state = train_lib.init_train_state(model, tx, config, mesh)
  rng = np.random.default_rng(0)
  mask = np.zeros((batch, patch, patch, 1), np.float32)
  mask[:, patch // 4:3 * patch // 4, patch // 4:3 * patch // 4] = 1
  host = {'blur': rng.random((batch, patch, patch, 3), np.float32),
          'sharp': rng.random((batch, patch, patch, 3), np.float32), 'mask': mask}
  data = train_lib.put_batch(host, mesh)

  step = train_lib.make_train_step(model, tx, config, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  memory_gb = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes) / 2**30
  state, m = compiled(state, data)  # warm-up
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, data)
  jax.block_until_ready(m)
  per_step = (time.perf_counter() - t0) / steps
  return dict(config=name, params=count_params(state.params), patch=patch, batch=batch,
              dtype=dtype, remat=remat, compile_s=compile_s, memory_gb=memory_gb,
              s_per_step=per_step,
              steps_per_s=1 / per_step, images_per_s=batch / per_step,
              loss=float(m['loss']))


def main(argv):
  del argv
  args = FLAGS
  print(f'jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}')
  header = ('| config | params | patch | batch | dtype | remat | memory GiB | compile s '
            '| s/step | steps/s | images/s |')
  rows = []
  for name in args.configs:
    r = bench(name, args.patch, args.batch, args.steps, args.dtype, args.remat)
    rows.append(f"| {r['config']} | {r['params'] / 1e6:.2f} M | {r['patch']} | {r['batch']} "
                f"| {r['dtype']} | {r['remat']} | {r['memory_gb']:.1f} | {r['compile_s']:.1f} "
                f"| {r['s_per_step']:.2f} "
                f"| {r['steps_per_s']:.3f} | {r['images_per_s']:.3f} |")
    print(rows[-1].replace('|', ' ').strip(), flush=True)
  print('\n' + header + '\n|' + ' --- |' * 11 + '\n' + '\n'.join(rows))


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
