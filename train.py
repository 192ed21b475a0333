r"""Trains LMD-ViT: one CPU, one GPU or a multi-host GPU/TPU pod.

  python train.py --config=configs/tiny.py --workdir=/tmp/lmdvit_tiny
  python train.py --config=configs/lmdvit.py --workdir=runs/lmdvit \
      --config.data.sources="('gopro:/data/GoPro', 'reloblur:/data/ReLoBlur')" \
      --config.optim.lr=2e-4

Run it again with the same workdir and it resumes from the newest checkpoint
exactly (params, optimizer, step, rng and data position). The workdir is also a
checkpoint directory for `evaluate.py --checkpoint` and `lmdvit_jax.deblur`:

  WORKDIR/model.json                  LMDViT keyword arguments
  WORKDIR/config.json                 the full training config
  WORKDIR/checkpoints/<step>/         params, opt_state, meta, data (latest N)
  WORKDIR/best/                       params with the best held-out weighted PSNR
  WORKDIR/metrics.jsonl               one JSON object per logged step
  WORKDIR/eval.jsonl                  one JSON object per evaluation
  WORKDIR/tensorboard/                TensorBoard event files
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Orbax reports every file it writes at INFO; keep its warnings only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= logging.converter.STANDARD_WARNING or 'orbax' not in r.pathname)
  config, workdir = _CONFIG.value, Path(_WORKDIR.value)
  train_and_evaluate(config, workdir)


def train_and_evaluate(config, workdir: str | Path) -> dict[str, float]:
  """The whole run; returns the last logged metrics."""
  # Imported here so that `--help` and config errors come back fast.
  import jax  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

  from lmdvit_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from lmdvit_jax import train_lib  # pylint: disable=g-import-not-at-top
  from lmdvit_jax.data import open_source  # pylint: disable=g-import-not-at-top
  from lmdvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  # 1. Devices: join the other hosts, one mesh axis `data` over all devices.
  distributed = {'': None, 'true': True, 'false': False}[str(config.distributed).lower()]
  train_lib.maybe_initialize_distributed(distributed)
  mesh = train_lib.make_mesh()
  lead = jax.process_index() == 0
  workdir = Path(workdir)
  logging.info('%d devices (%d processes), mesh %s', jax.device_count(),
               jax.process_count(), dict(mesh.shape))

  # 2. Data: global batches sharded over `data`, with a checkpointable position.
  train_iter = pipeline.make_train_iterator_from_config(config, mesh)
  eval_samples = []
  if config.eval_every_steps > 0 and config.eval.source:
    source = open_source(config.eval.source, split='test')
    eval_samples = [source[i] for i in range(min(len(source), int(config.eval.max_images)))]

  # 3. Model and optimizer.
  model = train_lib.build_model(config)
  model_kwargs = train_lib.model_kwargs(config)
  tx = train_lib.make_optimizer(config)
  checkpointing.check_model_kwargs(workdir, model_kwargs)  # Resuming another model fails here.
  if lead:
    checkpointing.write_model_json(workdir, model_kwargs)
    checkpointing.write_json_atomic(workdir / 'config.json', json.loads(config.to_json()))

  # 4. State: restore the newest checkpoint of this workdir, else initialise
  #    (from `init_from` weights if given) and replicate over the mesh.
  mngr = checkpointing.train_manager(workdir, max_to_keep=int(config.keep_checkpoints))
  init_params = None
  if mngr.latest_step() is None and config.init_from:
    _, init_params = checkpointing.load_model(config.init_from)
    train_lib.check_params_match(init_params, train_lib.abstract_params(model))
  state = train_lib.init_train_state(model, tx, config, mesh, params=init_params)
  if init_params is not None:
    logging.info('Initialised params from %s', config.init_from)
  if mngr.latest_step() is not None:
    state, data_state = checkpointing.restore_train_state(mngr, state)
    train_iter.set_state(data_state)
    logging.info('Resumed from step %d', int(state.step))

  # 5. Compiled functions.
  train_step = train_lib.make_train_step(model, tx, config, mesh)
  eval_model = train_lib.build_model(config, capacity=config.eval.capacity)
  eval_fn = train_lib.make_eval_fn(eval_model, mesh)
  evaluate = functools.partial(train_lib.evaluate, eval_fn, samples=eval_samples,
                               multiple=model.multiple)

  # 6. The loop.
  writer = SummaryWriter(str(workdir / 'tensorboard')) if lead else None

  def log(filename, step, values):
    if not lead:
      return
    for k, v in values.items():
      writer.add_scalar(k, v, step)
    writer.flush()
    with open(workdir / filename, 'a') as f:
      f.write(json.dumps({'step': step, **values}) + '\n')

  try:
    start, num_steps = int(jax.device_get(state.step)), int(config.num_train_steps)
    pending, last = [], {}
    t_window, steps_in_window = time.perf_counter(), 0
    with tqdm.tqdm(total=num_steps, initial=start, disable=not lead, unit='step') as bar:
      for step in range(start + 1, num_steps + 1):
        state, step_metrics = train_step(state, next(train_iter))
        pending.append(step_metrics)
        bar.update(1)
        if step == start + 1:  # Keep the compilation out of steps/s.
          jax.block_until_ready(state.step)
          logging.info('First step (compilation included): %.1f s', time.perf_counter() - t_window)
          t_window = time.perf_counter()
        else:
          steps_in_window += 1

        if step % config.log_every_steps == 0 or step == num_steps:
          last = train_lib.summarize(pending)
          if steps_in_window:
            last['steps_per_sec'] = steps_in_window / (time.perf_counter() - t_window)
            last['images_per_sec'] = last['steps_per_sec'] * config.batch_size
          log('metrics.jsonl', step, last)
          bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
          pending, t_window, steps_in_window = [], time.perf_counter(), 0

        if step % config.checkpoint_every_steps == 0 or step == num_steps:
          checkpointing.save_train_state(mngr, state, train_iter.get_state())

        if eval_samples and (step % config.eval_every_steps == 0 or step == num_steps):
          t0 = time.perf_counter()
          results = evaluate(state.params)
          results['seconds'] = time.perf_counter() - t0
          log('eval.jsonl', step, {f'eval/{k}': v for k, v in results.items()})
          if checkpointing.save_best(workdir, state.params, model_kwargs, step, results):
            logging.info('Step %d: new best weighted PSNR %.3f', step, results['wpsnr'])
          t_window = time.perf_counter()  # Keep evaluation out of steps/s.

    skipped = int(jax.device_get(state.skipped))
    if skipped:
      logging.warning('%d of %d steps were skipped (non-finite loss or gradient)', skipped,
                      num_steps)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    if writer is not None:
      writer.close()
  return last


if __name__ == '__main__':
  app.run(main)
