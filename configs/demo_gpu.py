"""The demo model trained on one GPU in one short call, on data without a ceiling.

    timeout -s TERM 420 python demo.py --train --config=configs/demo_gpu.py --workdir=W
    python demo.py --workdir=W --export_weights  # calibrates on val, replaces the shipped weights

The first command trains until the schedule ends or, at 7 minutes, SIGTERM
stops it after the step in flight with a checkpoint (train.py's preemption
handling), then scores the held-out and the outside sets. Set
`num_train_steps` to what the device does in about 6 minutes (the device
check's demo part, `python -m benchmarks.accelerator`, prints images/s) so
the cosine schedule ends before the stop.

The same architecture as `configs/demo.py` (it ships in 12.8 MB), trained from
scratch with:
  - 20k steps of batch 32 at 128x128 (the CPU runs: 8.5k of batch 8 at 64x64);
  - training pictures without a ceiling: the 15 training photos of the
    `packages` set and 64 procedural dead-leaves images (`photos=packages,deadleaves`),
    objects and backgrounds from either, in every source;
  - blur without one habit: half the batches from `preset=varied` (any
    outline, exposure, path or shake, a random camera with noise and JPEG),
    half from the default generator (docs/generalization.md: varied data
    alone found more of the outside set's blur but changed sharp regions);
  - twelve reader processes to keep a GPU fed (synthesis runs on the host).

Not run yet: no session has had a GPU. On the CPU it runs, slowly.
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  config.update(
    num_train_steps=20_000,
    batch_size=32,
    patch_size=128,
    log_every_steps=200,
    checkpoint_every_steps=1000,
    eval_every_steps=5000,
  )
  config.optim.update(lr=1e-3, warmup_steps=500, end_lr=1e-5)
  config.data.update(
    sources=(
      'synthetic?size=160&photos=packages,deadleaves&preset=varied',
      'synthetic?size=160&photos=packages,deadleaves',
    ),
    weights=(1.0, 1.0),
    num_threads=4,
    worker_count=12,
  )
  return config
