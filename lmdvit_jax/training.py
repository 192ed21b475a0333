"""The training run: `train_and_evaluate(config, workdir)`.

It reads top to bottom as the story of a run: devices and mesh, data, model
and optimizer, state (restored or initialised, replicated), the jitted step,
the loop with logging, checkpoints and held-out evaluation. The pieces live
in `train_lib` (state, optimizer, step, sharding), `checkpointing`,
`data.pipeline` and `evaluation`.

The workdir is also a checkpoint directory for `evaluate.py --checkpoint` and
`lmdvit_jax.deblur`:

  WORKDIR/model.json                  LMDViT keyword arguments
  WORKDIR/config.json                 the full training config
  WORKDIR/config.STEP.json            the config before a change accepted on resume
  WORKDIR/.lock                       held (flock) by the run using the workdir
  WORKDIR/checkpoints/<step>/         params, opt_state, meta, data (latest N)
  WORKDIR/best/                       params with the best held-out weighted PSNR
  WORKDIR/metrics.jsonl               one JSON object per logged step
  WORKDIR/eval.jsonl                  one JSON object per evaluation
  WORKDIR/tensorboard/                TensorBoard event files
"""

from __future__ import annotations

import json
import math
from pathlib import Path
import time

from absl import logging
import jax
import ml_collections
from tensorboardX import SummaryWriter
import tqdm

from lmdvit_jax import (
  checkpointing,
  config_checks,
  evaluation,
  files,
  preemption,
  run_record,
  train_lib,
  workdir_lock,
)
from lmdvit_jax import mesh as mesh_lib
from lmdvit_jax.data import open_source, pipeline
from lmdvit_jax.inference import Deblurrer
from lmdvit_jax.inference_settings import InferenceSettings


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | Path, allow_config_change: bool = False
) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its newest checkpoint).

  `allow_config_change`: resume a run whose recorded config differs in what
  it computes (see `run_record.record_config`).

  Returns:
    The last logged training metrics.
  """
  # 1. Devices: join the other hosts, one mesh axis `data` over all devices.
  choices = {'': None, 'true': True, 'false': False}
  if str(config.distributed).lower() not in choices:
    raise ValueError(f"distributed must be '', 'true' or 'false', got {config.distributed!r}")
  mesh_lib.maybe_initialize_distributed(choices[str(config.distributed).lower()])
  # Every config mistake is reported here, before the workdir is touched.
  config_checks.check_run_config(config)
  workdir = files.check_writable_dir(workdir, '--workdir')
  # One writer per workdir: a second run is refused here, by every process.
  with workdir_lock.held(workdir):
    return _run(config, Path(workdir), allow_config_change)


def _run(
  config: ml_collections.ConfigDict, workdir: Path, allow_config_change: bool
) -> dict[str, float]:
  """The run, in a workdir this process holds."""
  mesh = train_lib.make_mesh()
  lead = jax.process_index() == 0
  logging.info(
    '%d devices (%d processes), mesh %s', jax.device_count(), jax.process_count(), dict(mesh.shape)
  )

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
  # Resuming with other settings fails here too, unless asked for; then the
  # earlier config is kept beside the new one.
  for change in run_record.record_config(
    workdir,
    json.loads(config.to_json()),
    checkpointing.latest_step(workdir),
    allow_config_change,
    write=lead,
  ):
    logging.warning('Config changed on resume: %s', change)
  if lead:
    checkpointing.write_model_json(workdir, model_kwargs)

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
  resumed = 0
  if mngr.latest_step() is not None:
    state, data_state = checkpointing.restore_train_state(mngr, state)
    train_iter.set_state(data_state)
    resumed = int(jax.device_get(state.step))
    logging.info('Resumed from step %d', resumed)
    if lead:
      # Damaged newer steps (skipped by the restore) would block saving those steps again.
      for path in checkpointing.set_aside_steps_after(workdir, resumed):
        logging.warning('Set the damaged checkpoint aside as %s', path)
    mngr.reload()
  if lead:
    # Rows logged after the checkpoint (all of them when a run died before its
    # first) are about to be logged again: one row per step, always.
    for name in ('metrics.jsonl', 'eval.jsonl'):
      run_record.drop_rows_after(workdir / name, resumed)

  # 5. Compiled functions: the train step; evaluation compiles per image size.
  train_step = train_lib.make_train_step(model, tx, config, mesh)
  eval_model = train_lib.build_model(config, capacity=config.eval.capacity)

  def evaluate(params):
    settings = InferenceSettings(matmul_precision=config.get('matmul_precision', 'default'))
    deblurrer = Deblurrer(eval_model, jax.device_get(params), settings, warmup=False)
    return evaluation.run(deblurrer, eval_samples)['mean']

  # 6. The loop.
  writer = SummaryWriter(str(workdir / 'tensorboard')) if lead else None

  def log(filename, step, values):
    if not lead:
      return
    for k, v in values.items():
      if math.isfinite(v):  # e.g. the input's PSNR outside an empty mask is inf
        writer.add_scalar(k, v, step)
    writer.flush()
    with open(workdir / filename, 'a') as f:  # strict JSON: non-finite values as null
      f.write(files.json_line({'step': step, **values}) + '\n')

  # The next batches are placed on the devices while a step runs; a stop
  # signal ends the run after the step in flight, with a checkpoint of it.
  batches = pipeline.prefetch_to_devices(train_iter)
  stop = preemption.StopRequest()
  try:
    start, num_steps = int(jax.device_get(state.step)), int(config.num_train_steps)
    pending, last = [], {}
    t_window, steps_in_window = time.perf_counter(), 0
    with tqdm.tqdm(total=num_steps, initial=start, disable=not lead, unit='step') as bar:
      for step in range(start + 1, num_steps + 1):
        batch, data_position = next(batches)
        state, step_metrics = train_step(state, batch)  # dispatched; runs while we go on
        pending.append(step_metrics)
        bar.update(1)
        if step == start + 1:  # Keep the compilation out of steps/s.
          jax.block_until_ready(state.step)
          logging.info('First step (compilation included): %.1f s', time.perf_counter() - t_window)
          t_window = time.perf_counter()
        else:
          steps_in_window += 1
        stopping = stop.reached(step)

        if step % config.log_every_steps == 0 or step == num_steps or stopping:
          last = train_lib.summarize(pending)
          if steps_in_window:
            last['steps_per_sec'] = steps_in_window / (time.perf_counter() - t_window)
            last['images_per_sec'] = last['steps_per_sec'] * config.batch_size
          log('metrics.jsonl', step, last)
          bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
          pending, t_window, steps_in_window = [], time.perf_counter(), 0

        if step % config.checkpoint_every_steps == 0 or step == num_steps or stopping:
          checkpointing.save_train_state(mngr, state, data_position, step)
        if stopping:
          logging.warning(
            'Stopped by %s after step %d, checkpoint saved: run the same command to continue',
            stop.signal,
            step,
          )
          break

        if eval_samples and (step % config.eval_every_steps == 0 or step == num_steps):
          t0 = time.perf_counter()
          results = evaluate(state.params)
          results['seconds'] = time.perf_counter() - t0
          log('eval.jsonl', step, {f'eval/{k}': v for k, v in results.items()})
          # Orbax's multi-process saves share barrier names: let the train
          # state's background save finish before `best/` starts its own.
          mngr.wait_until_finished()
          if checkpointing.save_best(workdir, state.params, model_kwargs, step, results):
            logging.info('Step %d: new best weighted PSNR %.3f', step, results['wpsnr'])
          t_window = time.perf_counter()  # Keep evaluation out of steps/s.

    skipped = int(jax.device_get(state.skipped))
    if skipped:
      logging.warning(
        '%d of %d steps were skipped (non-finite loss or gradient)', skipped, num_steps
      )
  finally:
    stop.close()
    mngr.wait_until_finished()
    mngr.close()
    if writer is not None:
      writer.close()
  return last
