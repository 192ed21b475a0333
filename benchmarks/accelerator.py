r"""Every device question in one call: versions, parity, inference, training, the demo.

    python -m benchmarks.accelerator --output=OUT [--official_repo=/path/to/LMD-ViT]
    python -m benchmarks.accelerator --smoke --output=OUT    # tiny sizes, any CPU (CI runs it)

Writes OUT/accelerator.json (every figure) and OUT/accelerator.md (tables), on
whatever JAX sees (an H100/H200 in one short call: `--budget_s`, default 480).
The parts, in order, each timed, and skipped with a note when the time left is
less than its estimate (so a run always ends with its tables; --smoke runs all):

  devices    platform, device kind and count, memory, jax/jaxlib/flax versions;
  parity     fixture A (../shared/reference, the official model's outputs) at
             matmul precision 'highest' and 'default': largest differences of
             restored, gate and scores, and whether every keep decision matches;
  inference  a ReLoBlur-size image (1436x2152), released config, random
             weights: dense, 'exact' with predictors calibrated to keep about
             `--keep` of its windows, and a 0.25 budget, float32 and bfloat16;
             median seconds per image (compilation apart), XLA memory, peak
             device memory;
  train      the paper's recipe (512x512 crops, batch 12, released config),
             float32 and bfloat16, remat none and blocks, and pruned training
             (`train_capacity` 0.25) in float32 and bfloat16: images/s, memory;
  data       the input pipeline on this host: ReLoBlur-size frames (made
             here) through a frame cache, the recipe's crops and batches, with
             the default reader and one thread per core: crops/s, beside the
             fastest train step's images/s (does the data keep up?);
  demo       `configs/demo.py` from scratch for `--demo_s` seconds (--smoke: its
             model narrower and one block a stage, until three steps are logged,
             whatever the speed of the machine; stopped by SIGTERM, which
             checkpoints cleanly): the loss at its first and last logged steps;
  official   with `--official_repo` and torch importable: the official model's
             inference (same size, all and `--keep` of the windows kept) and
             train step (same recipe), on the same device, in this run.

Float32 timings use matmul precision 'default' (the backend's; TF32-like on
NVIDIA GPUs), as users run; parity reports both.
"""

from __future__ import annotations

from collections.abc import Callable
import importlib.util
import json
import os
from pathlib import Path
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import calibrate, import_official, keep_all, load_config, random_batch
from lmdvit_jax import cli, convert, files, inference, programs, tiling, train_lib
from lmdvit_jax.inference_settings import InferenceSettings
from lmdvit_jax.models import LMDViT, init_params

FLAGS = flags.FLAGS
REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / 'shared' / 'reference'

# Sizes of the full run and of --smoke.
FULL = dict(
  image=(1436, 2152),
  model='lmdvit',
  shrink={},
  patch=512,
  batch=12,
  repeats=5,
  steps=5,
  data_frames=8,
  data_batches=8,
  # (mode, dtype) of the inference rows: every mode in float32 and bfloat16.
  inference_combos=[
    (m, d) for m in ('dense', 'exact', 'budget 0.25') for d in ('float32', 'bfloat16')
  ],
  # (dtype, remat, train_capacity): the dense step four ways, pruned training at 0.25.
  train_combos=[(d, r, 'dense') for d in ('float32', 'bfloat16') for r in ('none', 'blocks')]
  + [('float32', 'none', 0.25), ('bfloat16', 'none', 0.25)],
)
SMOKE = dict(
  image=(100, 150),
  model='tiny',
  shrink=dict(win_size=4, depths=(1,) * 9),
  patch=64,
  batch=2,
  repeats=2,
  steps=2,
  data_frames=2,
  data_batches=2,
  # Every mode and both dtypes, each at least once; both remats, pruned training.
  inference_combos=[('dense', 'float32'), ('exact', 'bfloat16'), ('budget 0.25', 'float32')],
  train_combos=[('float32', 'none', 'dense'), ('bfloat16', 'blocks', 0.25)],
)
# Seconds each part is expected to take on an H100/H200 (the full run); a part
# starts only if this much of the budget is left. --smoke runs every part, so
# that what its test checks never depends on the machine's speed.
ESTIMATE_S = {
  'devices': 5,
  'parity': 30,
  'inference': 150,
  'train': 150,
  'data': 60,
  'demo': 150,
  'official': 60,
}


def _define_flags() -> None:
  flags.DEFINE_string('output', None, 'Folder for accelerator.json and accelerator.md.')
  flags.DEFINE_bool('smoke', False, 'Every part at tiny sizes (minutes on a CPU).')
  flags.DEFINE_float('budget_s', 480, 'Seconds for the whole run.')
  flags.DEFINE_float('keep', 0.28, "Windows the 'exact' predictors keep (inference).")
  flags.DEFINE_float('demo_s', 120, 'Seconds of demo training (--smoke: until 3 logged steps).')
  flags.DEFINE_string('official_repo', None, 'A checkout of LeiaLi/LMD-ViT (needs torch).')
  flags.DEFINE_list('parts', list(ESTIMATE_S), 'Parts to run.')


def _median_seconds(run: Callable[[], Any], repeats: int) -> float:
  run()  # warm-up: allocation, autotuning
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _peak_device_gib() -> float | None:
  """The device's peak memory in use so far (None where it does not say, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else peak / 2**30


def _xla_gib(compiled) -> float | None:
  used = programs.compiled_memory(compiled)
  return None if used is None else used / 2**30


# ---------------------------------------------------------------------------
# Parts. Each returns {'rows': [...], 'notes': [...]}.


def devices(sizes: dict) -> dict:
  del sizes
  d = jax.devices()[0]
  stats = d.memory_stats() or {}
  import flax
  import jaxlib

  return {
    'rows': [
      {
        'platform': d.platform,
        'device_kind': d.device_kind,
        'count': jax.device_count(),
        'memory_gib': stats['bytes_limit'] / 2**30 if 'bytes_limit' in stats else None,
        'jax': jax.__version__,
        'jaxlib': jaxlib.__version__,
        'flax': flax.__version__,
        'python': platform.python_version(),
        'host': platform.machine(),
        'cpus': os.cpu_count(),
      }
    ],
    'notes': [],
  }


def parity(sizes: dict) -> dict:
  del sizes
  name = 'fixture_a'
  if not (REFERENCE / f'{name}_io.npz').is_file():
    return {'rows': [], 'notes': [f'no fixtures in {REFERENCE}: parity skipped']}
  with np.load(REFERENCE / f'{name}_weights.npz') as z:
    sd = {k: z[k] for k in z.files}
  with np.load(REFERENCE / f'{name}_io.npz') as z:
    io = {k: z[k] for k in z.files}
  model = LMDViT(**convert.model_kwargs_from_torch(sd), capacity='exact')
  params = convert.params_from_torch(sd)
  rows = []
  for precision in ('highest', 'default'):
    with jax.default_matmul_precision(precision):
      out = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, io['input'])
    n = len(out.decisions)
    rows.append(
      {
        'precision': precision,
        'restored_max_abs': float(np.abs(np.asarray(out.restored) - io['restored']).max()),
        'gate_max_abs': float(np.abs(np.asarray(out.gate) - io['gate']).max()),
        'scores_max_abs': max(
          float(np.abs(np.asarray(out.scores[i]) - io[f'scores_{i:02d}']).max()) for i in range(n)
        ),
        'decisions_equal': all(
          np.array_equal(np.asarray(out.decisions[i]), io[f'decisions_{i:02d}']) for i in range(n)
        ),
      }
    )
  return {'rows': rows, 'notes': ['tolerance held on CPU: 1e-4 (restored, gate)']}


def _config(sizes: dict, dtype: str = 'float32', remat: str = 'none'):
  """The run's training config (`--smoke`: the tiny model shrunk further)."""
  config = load_config(sizes['model'], sizes['patch'], sizes['batch'], dtype, remat)
  config.model.update(sizes['shrink'])
  return config


def _model_kwargs(sizes: dict) -> dict:
  kwargs = dict(_config(sizes).model)
  kwargs.pop('drop_path_rate', None)
  return kwargs


def inference_part(sizes: dict) -> dict:
  h, w = sizes['image']
  kwargs = _model_kwargs(sizes)
  image = np.random.default_rng(0).uniform(size=(h, w, 3)).astype(np.float32)
  g = tiling.pad_geometry(h, w, LMDViT(**kwargs).multiple)
  canvas = jnp.asarray(g.pad(image[None]))
  base = init_params(LMDViT(**kwargs), 0)
  pruned = LMDViT(**kwargs, capacity='exact')
  calibrated = calibrate(pruned, base, canvas, FLAGS.keep)
  modes = {
    'dense': (LMDViT(**dict(kwargs, prune_loc=(0,) * 9), capacity=1.0), base),
    'exact': (pruned, calibrated),
    'budget 0.25': (LMDViT(**kwargs, capacity=0.25), keep_all(pruned, base)),
  }
  rows = []
  for mode, dtype in sizes['inference_combos']:
    model, params = modes[mode]
    m = model.clone(dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32)
    deblurrer = inference.Deblurrer(m, params, InferenceSettings(tile=0), warmup=False)
    start = time.perf_counter()
    fn = deblurrer._executable(1, *g.padded_shape)
    compile_s = time.perf_counter() - start
    p = deblurrer.params
    out = fn(p, canvas)
    kept = [float(np.mean(d)) for d in jax.device_get(out[1])]
    kept = min(
      float(np.mean(kept)) if kept else 1.0, m.capacity if isinstance(m.capacity, float) else 1.0
    )
    rows.append(
      {
        'mode': mode,
        'dtype': dtype,
        'size': f'{h}x{w}',
        'kept': kept,
        'seconds': _median_seconds(lambda fn=fn, p=p: fn(p, canvas), sizes['repeats']),
        'compile_s': compile_s,
        'xla_gib': _xla_gib(fn),
        'peak_device_gib': _peak_device_gib(),
      }
    )
  return {
    'rows': rows,
    'notes': [
      f'padded to {g.padded_height}x{g.padded_width}; peak device memory is the process peak so far'
    ],
  }


def train(sizes: dict) -> dict:
  rows, notes = (
    [],
    [f'{sizes["model"]} config, random batch; median of {sizes["steps"]} steps after one'],
  )
  for dtype, remat, capacity in sizes['train_combos']:
    try:
      rows.append(_train_row(sizes, dtype, remat, capacity))
    except Exception as e:  # e.g. out of memory without remat
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
      notes.append(
        f'{dtype}, remat {remat}, train_capacity {capacity}: {type(e).__name__}: {first}'
      )
  return {'rows': rows, 'notes': notes}


def _train_row(sizes: dict, dtype: str, remat: str, capacity: str | float = 'dense') -> dict:
  config = _config(sizes, dtype, remat)
  config.train_capacity = capacity
  mesh = train_lib.make_mesh()
  model = train_lib.build_model(config)
  tx = train_lib.make_optimizer(config)
  state = train_lib.init_train_state(model, tx, config, mesh)
  batch = train_lib.put_batch(random_batch(sizes['batch'], sizes['patch']), mesh)
  start = time.perf_counter()
  step = train_lib.make_train_step(model, tx, config, mesh).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  holder = {'state': state}

  def run():
    holder['state'], metrics = step(holder['state'], batch)
    return metrics

  seconds = _median_seconds(run, sizes['steps'])
  return {
    'dtype': dtype,
    'remat': remat,
    'train_capacity': capacity,
    'patch': sizes['patch'],
    'batch': sizes['batch'],
    'seconds_per_step': seconds,
    'images_per_s': sizes['batch'] / seconds,
    'compile_s': compile_s,
    'xla_gib': _xla_gib(step),
    'peak_device_gib': _peak_device_gib(),
  }


def data(sizes: dict) -> dict:
  from benchmarks import input_pipeline
  from lmdvit_jax.data import build

  root = Path(tempfile.mkdtemp(prefix='accelerator_data_'))
  frame = sizes['image'] if not FLAGS.smoke else (200, 300)
  spec = input_pipeline.make_datasets(root, sizes['data_frames'], frame, None)['reloblur']
  cached = f'{spec}?cache={root / "cache"}'
  built = build.build_cache(cached)
  rows = []
  cores = input_pipeline.cores()
  for threads in sorted({2, cores}):
    row = input_pipeline.time_reader(
      cached, threads, 0, sizes['data_batches'], sizes['patch'], sizes['batch']
    )
    rows.append(
      {
        'frames': f'{frame[1]}x{frame[0]}',
        'threads': threads,
        'cores': cores,
        'crops_per_s': row['crops_per_s'],
        'crops_per_s_per_core': row['crops_per_s_per_core'],
      }
    )
  return {
    'rows': rows,
    'notes': [
      f'{sizes["data_frames"]} frames decoded into the cache in '
      f'{built["seconds"]:.1f} s; threads 2 is the default reader'
    ],
  }


def _does_data_keep_up(parts: dict) -> None:
  """Adds to the data part's notes whether its crops/s feed the fastest train step."""
  crops = [r['crops_per_s'] for r in parts.get('data', {}).get('rows', [])]
  steps = [r['images_per_s'] for r in parts.get('train', {}).get('rows', [])]
  if crops and steps:
    verdict = 'keeps up' if max(crops) >= max(steps) else 'does NOT keep up'
    parts['data']['notes'].append(
      f'the pipeline gives {max(crops):.0f} crops/s, the fastest train step takes '
      f'{max(steps):.1f} images/s: the data {verdict} ({max(crops) / max(steps):.1f}x)'
    )


def demo(sizes: dict) -> dict:
  seconds = FLAGS.demo_s
  workdir = Path(tempfile.mkdtemp(prefix='accelerator_demo_'))
  overrides = [
    '--config.eval_every_steps=0',
    '--config.log_every_steps=10',
    '--config.num_train_steps=1000000',
    '--config.checkpoint_every_steps=1000000',
  ]
  if FLAGS.smoke:
    overrides += [
      '--config.patch_size=64',
      '--config.batch_size=2',
      '--config.log_every_steps=1',
      '--config.model.embed_dim=8',
      f'--config.model.depths={(1,) * 9}',
    ]
  proc = subprocess.Popen(
    [
      sys.executable,
      str(REPO / 'train.py'),
      '--config=configs/demo.py',
      f'--workdir={workdir}',
      *overrides,
    ],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  log = workdir / 'metrics.jsonl'
  if FLAGS.smoke:  # Until three steps are logged, however slow the machine (SIGTERM is tested).
    deadline = time.perf_counter() + 600
    while (
      proc.poll() is None
      and time.perf_counter() < deadline
      and (not log.is_file() or len(log.read_text().splitlines()) < 3)
    ):
      time.sleep(0.5)
  else:
    time.sleep(seconds)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  rows = [json.loads(l) for l in log.read_text().splitlines()] if log.is_file() else []
  notes = [
    f'train.py exited {proc.returncode} after SIGTERM'
    + ('' if FLAGS.smoke else f' at {seconds:.0f} s')
  ]
  if proc.returncode:
    notes.append(err.strip().splitlines()[-1] if err.strip() else 'no message')
  if not rows:
    return {'rows': [], 'notes': notes + ['no step was logged (compilation took the time)']}
  first, last = rows[0], rows[-1]
  return {
    'rows': [
      {
        'first_step': first['step'],
        'first_loss': first['loss'],
        'last_step': last['step'],
        'last_loss': last['loss'],
        'images_per_s': last.get('images_per_sec'),
        'loss_fell': last['loss'] < first['loss'],
      }
    ],
    'notes': notes,
  }


def official(sizes: dict) -> dict:
  if not FLAGS.official_repo:
    return {'rows': [], 'notes': ['no --official_repo: the official model was not timed']}
  if importlib.util.find_spec('torch') is None:
    return {'rows': [], 'notes': ['torch is not installed: the official model was not timed']}
  torch, model_hw = import_official(FLAGS.official_repo)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  m = _config(sizes).model
  net = model_hw.LMD(
    img_size=512,
    embed_dim=m.embed_dim,
    win_size=m.win_size,
    token_projection='linear',
    token_mlp='lefflocal',
    depths=list(m.depths),
    num_heads=list(m.num_heads),
    mlp_ratio=m.mlp_ratio,
    modulator=m.modulator,
    dd_in=3,
    drop_path_rate=m.drop_path_rate,
    prune_loc=list(m.prune_loc),
  ).to(device)

  def timed(run):
    run()
    if device == 'cuda':
      torch.cuda.synchronize()
    times = []
    for _ in range(sizes['repeats']):
      start = time.perf_counter()
      run()
      if device == 'cuda':
        torch.cuda.synchronize()
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  rows = []
  h, w = sizes['image']
  multiple = 16 * m.win_size
  x = torch.rand(1, 3, -(-h // multiple) * multiple, -(-w // multiple) * multiple, device=device)
  net.eval()
  with torch.no_grad():
    rows.append(
      {'work': f'inference {h}x{w}, all windows kept (eval mode)', 'seconds': timed(lambda: net(x))}
    )
  batch = {
    k: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2))).to(device)
    for k, v in random_batch(sizes['batch'], sizes['patch']).items()
  }
  net.train()
  opt = torch.optim.AdamW(net.parameters(), lr=2e-4)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = (net(batch['blur'])[0] - batch['sharp']).abs().mean()
    loss.backward()
    opt.step()

  seconds = timed(step)
  rows.append(
    {
      'work': f'train step {sizes["batch"]}x{sizes["patch"]}x{sizes["patch"]}',
      'seconds': seconds,
      'images_per_s': sizes['batch'] / seconds,
    }
  )
  return {
    'rows': rows,
    'notes': [
      f'torch {torch.__version__} on {device}; the predictors decide as their random weights say'
    ],
  }


PARTS = {
  'devices': devices,
  'parity': parity,
  'inference': inference_part,
  'train': train,
  'data': data,
  'demo': demo,
  'official': official,
}


def markdown(report: dict) -> str:
  out = [
    f'# Accelerator check ({report["mode"]})',
    '',
    f'{report["started"]}; budget {report["budget_s"]:.0f} s, used {report["used_s"]:.0f} s.',
    '',
  ]
  for name, part in report['parts'].items():
    out.append(f'## {name} ({part.get("seconds", 0):.0f} s)')
    out.append('')
    rows = part.get('rows', [])
    if rows:
      keys = list(rows[0])
      out.append('| ' + ' | '.join(keys) + ' |')
      out.append('| ' + ' | '.join('---' for _ in keys) + ' |')
      for r in rows:
        cells = [
          f'{v:.4g}' if isinstance(v, float) else '-' if v is None else str(v)
          for v in (r.get(k) for k in keys)
        ]
        out.append('| ' + ' | '.join(cells) + ' |')
      out.append('')
    out.extend(f'- {n}' for n in part.get('notes', []))
    out.append('')
  return '\n'.join(out)


def main(argv):
  del argv
  if not FLAGS.output:
    raise ValueError('--output is required')
  unknown = set(FLAGS.parts) - set(PARTS)
  if unknown:
    raise ValueError(f'unknown --parts {sorted(unknown)}; choose from {list(PARTS)}')
  out = files.check_writable_dir(FLAGS.output)
  sizes = SMOKE if FLAGS.smoke else FULL
  start = time.perf_counter()
  report = {
    'mode': 'smoke' if FLAGS.smoke else 'full',
    'budget_s': FLAGS.budget_s,
    'started': time.strftime('%Y-%m-%d %H:%M:%S'),
    'sizes': sizes,
    'parts': {},
  }
  for name in PARTS:
    if name not in FLAGS.parts:
      continue
    left = FLAGS.budget_s - (time.perf_counter() - start)
    if left < ESTIMATE_S[name] and not FLAGS.smoke:
      report['parts'][name] = {
        'notes': [f'skipped: {left:.0f} s left, about {ESTIMATE_S[name]:.0f} s needed']
      }
      continue
    t0 = time.perf_counter()
    try:
      part = PARTS[name](sizes)
    except Exception as e:  # one part must not sink the rest
      part = {
        'rows': [],
        'notes': [
          f'failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}'
          if str(e)
          else f'failed: {type(e).__name__}'
        ],
      }
    part['seconds'] = time.perf_counter() - t0
    report['parts'][name] = part
    report['used_s'] = time.perf_counter() - start
    files.write_json_atomic(out / 'accelerator.json', report)  # what is done survives
    print(f'{name}: {part["seconds"]:.0f} s', flush=True)
  report['used_s'] = time.perf_counter() - start
  _does_data_keep_up(report['parts'])
  files.write_json_atomic(out / 'accelerator.json', report)
  files.write_bytes_atomic(out / 'accelerator.md', markdown(report).encode())
  print(markdown(report))


if __name__ == '__main__':
  _define_flags()
  cli.run(main, quiet=True)
