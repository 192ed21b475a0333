"""Training input pipeline throughput: crops per second per core, PNG against the frame cache.

    python -m benchmarks.input_pipeline                       # makes the data in /tmp
    python -m benchmarks.input_pipeline --data=DIR            # makes it in DIR, or takes it there

Makes (unless DIR already has them) a ReLoBlur-layout folder of full-size
frames (2152x1436, a photo with sensor noise, PNGs of about 5 MB as
ReLoBlur's are, blob masks) and a GoPro-layout one (1280x720), then reads each
with the paper's recipe (512x512 blur-aware crops, batch 12) through
`pipeline.make_train_iterator`, from the PNG files and from a frame cache
(`?cache=DIR`, built first and timed apart), for every reader setting. Then
the cached crop's parts are timed one by one on one core (read and crop,
flip, float conversion, batching) beside this machine's memory bandwidth, the
physical limit. Prints Markdown tables; `--output=FILE.json` keeps the numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image

from benchmarks.common import cpu_model
from lmdvit_jax import cli


def _define_flags() -> None:
  flags.DEFINE_string(
    'data', None, 'Folder for the generated data sets (default: a temporary folder).'
  )
  flags.DEFINE_integer('frames', 24, 'Frames in each data set.')
  flags.DEFINE_string('reloblur_size', '2152x1436', 'WxH of the ReLoBlur-layout frames.')
  flags.DEFINE_string('gopro_size', '1280x720', 'WxH of the GoPro-layout frames.')
  flags.DEFINE_integer('patch', 512, 'Crop side.')
  flags.DEFINE_integer('batch', 12, 'Batch size.')
  flags.DEFINE_integer('batches', 8, 'Batches timed per row (after two warm-up batches).')
  flags.DEFINE_integer('png_batches', 3, 'Batches timed per row of the PNG path (it is slow).')
  flags.DEFINE_list(
    'settings',
    ['2:0', '1:0', '1:2', '2:2'],
    'Reader settings as THREADS:WORKER_PROCESSES; the first is the default.',
  )
  flags.DEFINE_string('output', None, 'Also write the numbers as JSON here.')


ONE_PASS = 'origin, read, crop, flip and conversion in one pass, as the pipeline runs them'
PHOTO_NOISE = 3.0  # Grey levels of sensor noise: PNGs of about 5 MB at 2152x1436.


def _size(text: str) -> tuple[int, int]:
  w, h = (int(v) for v in text.lower().split('x'))
  return h, w


def _frame(
  rng: np.random.Generator, photo: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(sharp, blur, mask): a noisy photo, smeared inside one to three blobs."""
  ph, pw = photo.shape[:2]
  y, x = rng.integers(0, ph // 4), rng.integers(0, pw // 4)
  crop = photo[y : y + 3 * ph // 4, x : x + 3 * pw // 4]
  base = np.asarray(Image.fromarray(crop).resize((w, h), Image.BICUBIC), np.float32)
  sharp = np.clip(base + rng.normal(0, PHOTO_NOISE, base.shape), 0, 255).astype(np.uint8)
  yy, xx = np.mgrid[:h, :w]
  mask = np.zeros((h, w), bool)
  for _ in range(rng.integers(1, 4)):
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.03, 0.15) * w
    mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
  shift = int(rng.integers(4, 24))
  smeared = np.mean([np.roll(base, k, axis=1) for k in range(0, shift, 2)], axis=0)
  blur = np.where(mask[..., None], smeared + rng.normal(0, PHOTO_NOISE, base.shape), sharp)
  return sharp, np.clip(blur, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def make_datasets(
  root: Path, frames: int, reloblur_size: tuple[int, int], gopro_size: tuple[int, int] | None
) -> dict[str, str]:
  """ReLoBlur and GoPro layouts under `root` (kept: made once; no GoPro
  without `gopro_size`); their data specs."""
  import skimage.data

  photos = [
    skimage.data.astronaut(),
    skimage.data.coffee(),
    skimage.data.chelsea(),
    skimage.data.rocket(),
  ]
  reloblur, gopro = root / 'reloblur', root / 'gopro'
  layouts = [('reloblur', reloblur, reloblur_size)] + (
    [('gopro', gopro, gopro_size)] if gopro_size else []
  )
  for name, folder, (h, w) in layouts:
    done = folder / '.complete'
    if done.is_file() and done.read_text() == f'{frames} {h}x{w}':
      continue
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    print(f'Making {frames} {w}x{h} frames in {folder} ...', flush=True)
    for i in range(frames):
      sharp, blur, mask = _frame(rng, photos[i % len(photos)], h, w)
      if name == 'reloblur':
        seq = folder / 'dataset' / 'train' / f'scene{i // 8}' / 'seq0'
        seq.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sharp).save(seq / f'{i:05d}_sharp.png')
        Image.fromarray(blur).save(seq / f'{i:05d}_blur.png')
        masks = folder / 'masks' / 'train' / f'scene{i // 8}' / 'seq0'
        masks.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(masks / f'{i:05d}.png')
      else:
        seq = folder / 'GOPRO_Large' / 'train' / f'seq{i // 8}'
        for kind, image in (('sharp', sharp), ('blur', blur)):
          (seq / kind).mkdir(parents=True, exist_ok=True)
          Image.fromarray(image).save(seq / kind / f'{i:06d}.png')
    done.write_text(f'{frames} {h}x{w}')
  return {name: f'{name}:{folder}' for name, folder, _ in layouts}


def cores() -> int:
  return len(os.sched_getaffinity(0))


def time_reader(
  spec: str, threads: int, workers: int, batches: int, patch: int = 512, batch: int = 12
) -> dict[str, float]:
  """Crops/s of `make_train_iterator` over `batches` batches, after two warm-up batches."""
  from lmdvit_jax.data import pipeline

  it = pipeline.make_train_iterator(
    [spec], patch_size=patch, batch_size=batch, seed=0, num_threads=threads, worker_count=workers
  )
  for _ in range(2):
    it.next_local()
  cpu0, t0 = time.process_time(), time.perf_counter()
  for _ in range(batches):
    it.next_local()
  seconds = time.perf_counter() - t0
  crops = batches * batch
  return {
    'crops_per_s': crops / seconds,
    'crops_per_s_per_core': crops / seconds / cores(),
    'seconds_per_batch': seconds / batches,
    'main_process_cpu_s_per_crop': (time.process_time() - cpu0) / crops,
  }


def memory_bandwidth() -> float:
  """Bytes per second one core copies between two 256 MB arrays (read + write counted)."""
  a = np.ones(1 << 28, np.uint8)
  b = np.empty_like(a)
  np.copyto(b, a)
  best = min(_seconds(lambda: np.copyto(b, a)) for _ in range(5))
  return 2 * a.nbytes / best


def _seconds(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def crop_parts(spec: str, patch: int, batch: int, batches: int = 20) -> dict[str, float]:
  """Milliseconds per crop of each part of the cached path, one core, in turn,
  batch after batch (memory is reused as in the pipeline)."""
  from lmdvit_jax.data import crops, open_source
  from lmdvit_jax.data.examples import IMAGE_KEYS, to_sample

  source = open_source(spec, split='train')
  rng = np.random.default_rng(0)
  parts = dict.fromkeys(
    ('origin (mask runs)', 'read and crop', 'flip', 'float conversion', 'batching', ONE_PASS), 0.0
  )
  for b in range(batches + 1):
    if b == 1:  # The first batch maps the frames and warms the allocator.
      parts = dict.fromkeys(parts, 0.0)
    samples = []
    for i in range(batch):
      example = source.example((b * batch + i) % len(source))
      t0 = time.perf_counter()
      y, x, _ = crops.crop_origin(rng, example['mask'], patch, 0.5, example['mask_runs'])
      t1 = time.perf_counter()
      cut = {k: np.array(example[k][y : y + patch, x : x + patch]) for k in IMAGE_KEYS}
      t2 = time.perf_counter()
      cut = {k: np.ascontiguousarray(v) for k, v in crops.random_flips(rng, cut).items()}
      t3 = time.perf_counter()
      samples.append(to_sample(cut))
      t4 = time.perf_counter()
      for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
        parts[key] += dt
    t0 = time.perf_counter()
    stacked = {k: np.stack([s[k] for s in samples]) for k in IMAGE_KEYS}
    parts['batching'] += time.perf_counter() - t0
    del stacked, samples
    # As the pipeline does it: no copy of the crop, the float conversion reads
    # the flipped view of the memory map.
    for i in range(batch):
      example = source.example((b * batch + i) % len(source))
      t0 = time.perf_counter()
      cut = crops.random_flips(rng, crops.blur_aware_crop(rng, example, patch))
      {k: np.ascontiguousarray(v) for k, v in to_sample({k: cut[k] for k in IMAGE_KEYS}).items()}
      parts[ONE_PASS] += time.perf_counter() - t0
  return {k: v / (batches * batch) * 1e3 for k, v in parts.items()}


def main(argv):
  del argv
  fl = flags.FLAGS
  from lmdvit_jax.data import build

  root = Path(fl.data) if fl.data else Path(tempfile.gettempdir()) / 'lmdvit_input_pipeline'
  specs = make_datasets(root, fl.frames, _size(fl.reloblur_size), _size(fl.gopro_size))
  cache_dir = root / 'cache'
  report = {'cores': cores(), 'cpu': cpu_model(), 'rows': [], 'builds': {}}
  print(f'{report["cpu"]}, {cores()} cores; {fl.patch}x{fl.patch} crops, batch {fl.batch}\n')
  for name, spec in specs.items():
    cached = f'{spec}?cache={cache_dir}'
    shutil.rmtree(cache_dir, ignore_errors=True)
    report['builds'][name] = build.build_cache(cached)
  print(
    '\n| data | reader | threads | worker processes | crops/s | crops/s per core | s per batch |'
  )
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for name, spec in specs.items():
    for path, use in (('PNG', spec), ('cache', f'{spec}?cache={cache_dir}')):
      for setting in fl.settings:
        threads, workers = (int(v) for v in setting.split(':'))
        row = time_reader(
          use, threads, workers, fl.png_batches if path == 'PNG' else fl.batches, fl.patch, fl.batch
        )
        row.update(data=name, reader=path, threads=threads, workers=workers)
        report['rows'].append(row)
        print(
          f'| {name} | {path} | {threads} | {workers} | {row["crops_per_s"]:.1f} | '
          f'{row["crops_per_s_per_core"]:.1f} | {row["seconds_per_batch"]:.3f} |',
          flush=True,
        )
  parts = crop_parts(f'{specs["reloblur"]}?cache={cache_dir}', fl.patch, fl.batch)
  bandwidth = memory_bandwidth()
  per_crop = fl.patch**2 * 7
  # Bytes a crop moves: read the uint8 crop, write and read the float32 sample
  # (4 bytes a value), write the float32 batch.
  moved = per_crop * (1 + 4 + 4 + 4)
  report.update(parts_ms=parts, bandwidth=bandwidth, bytes_moved_per_crop=moved)
  print('\nOne core, ReLoBlur-size frames from the cache, ms per crop:\n')
  print('| part | ms per crop |\n| --- | --- |')
  separate = {k: v for k, v in parts.items() if k != ONE_PASS}
  for key, ms in separate.items():
    print(f'| {key} | {ms:.2f} |')
  print(f'| all, one after another | {sum(separate.values()):.2f} |')
  print(f'| {ONE_PASS}, then batching | {parts[ONE_PASS] + parts["batching"]:.2f} |')
  print(
    f'\nMemory bandwidth, one core copying: {bandwidth / 1e9:.1f} GB/s; a crop moves about '
    f'{moved / 1e6:.1f} MB (uint8 read, float32 written, read and batched), so one core '
    f'moves at most {bandwidth / moved:.0f} crops/s.'
  )
  if fl.output:
    Path(fl.output).write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
