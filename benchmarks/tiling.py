r"""Peak memory and time of deblurring 1 to 24 megapixel photos, tiled and whole.

    python -m benchmarks.tiling                          # 1, 4, 12, 24 MP; dense and pruned
    python -m benchmarks.tiling --sizes=6000x4000 --modes=pruned --layouts=auto

Each row is one run of the user's command, `python -m lmdvit_jax.deblur
--checkpoint CK PHOTO --output OUT`, in its own process: peak resident memory
is that process's (`wait4`), wall time includes start-up and compilation
(persistent cache as the user has it), and "model s" is the time the command
reports for the image (compilation excluded).

The photo is a real frame (`--photo`, default a GoPro frame from
`../shared/data/real/`) resized to each size and saved as JPEG. Weights are
the released configuration's (54.5 M params), random:
  dense    pruning off (`prune_loc` all 0), `--capacity=1.0`;
  pruned   the default command (capacity 'exact'), each confidence predictor
           set to keep about `--keep` of the windows of a 512x512 crop of the
           photo (`benchmarks.inference.calibrate`).
Layouts: `auto` is the default (tiles when the canvas needs more than
`--max_memory`, else whole); `whole` forces `--tile=0`, run only where the
program's own estimate fits `--whole_limit` of this machine's memory.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import subprocess
import sys
import tempfile
import time

from absl import flags
import jax
import numpy as np
from PIL import Image

from benchmarks.common import calibrate
from configs import lmdvit as lmdvit_config
from lmdvit_jax import checkpointing, cli, programs
from lmdvit_jax.models import LMDViT, init_params

FLAGS = flags.FLAGS
REAL = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'real'
# Memory per canvas pixel of the released model's compiled program (bytes),
# read off XLA's buffer assignment: whole-image runs that would not fit are
# skipped instead of swapping.
BYTES_PER_PIXEL = {'dense': 3148, 'pruned': 1361}


def _define_flags() -> None:
  # Only when run as a program, so that importing the module claims no flag names.
  flags.DEFINE_list(
    'sizes',
    ['1152x864', '2304x1728', '4000x3000', '6000x4000'],
    'photo sizes WxH (about 1, 4, 12 and 24 megapixels)',
  )
  flags.DEFINE_list('modes', ['dense', 'pruned'], 'dense and/or pruned')
  flags.DEFINE_list('layouts', ['auto', 'whole'], 'auto (the default command) and/or whole')
  flags.DEFINE_string('photo', str(REAL / 'gopro_1fromGOPR0950.png'), 'source photograph')
  flags.DEFINE_float('keep', 0.25, 'share of windows the pruned model keeps')
  flags.DEFINE_string('max_memory', None, '--max_memory of the runs (default: the command\'s)')
  flags.DEFINE_float(
    'whole_limit',
    0.8,
    'run whole images only if they need less than this share of the machine\'s memory',
  )
  flags.DEFINE_string(
    'workdir', None, 'where checkpoints, photos and outputs go (default: a temporary folder)'
  )


def make_checkpoints(root: Path, photo: np.ndarray, keep: float) -> dict[str, Path]:
  """Released-config checkpoints with random weights: dense, and pruned with
  predictors calibrated on a 512x512 crop of `photo`."""
  cfg = dict(lmdvit_config.get_model_config())
  cfg.pop('drop_path_rate')
  out = {}
  dense = dict(cfg, prune_loc=(0,) * 9)
  if not (root / 'dense' / 'model.json').exists():
    checkpointing.save_model(root / 'dense', init_params(LMDViT(**dense), 0), dense)
  out['dense'] = root / 'dense'
  if not (root / 'pruned' / 'model.json').exists():
    model = LMDViT(**cfg, capacity='exact')
    h, w = photo.shape[:2]
    top, left = (h - 512) // 2, (w - 512) // 2
    crop = jax.numpy.asarray(photo[None, top : top + 512, left : left + 512], np.float32) / 255
    checkpointing.save_model(
      root / 'pruned', calibrate(model, init_params(model, 0), crop, keep), cfg
    )
  out['pruned'] = root / 'pruned'
  return out


def peak_rss_run(command: list[str]) -> tuple[int, float, float, str]:
  """Runs `command`; returns (exit status, wall seconds, peak RSS in bytes, output)."""
  start = time.perf_counter()
  with tempfile.TemporaryFile('w+') as log:
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    log.seek(0)
    text = log.read()
  return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss * 1024, text


def machine_memory() -> int:
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def main(argv):
  del argv
  root = Path(FLAGS.workdir or tempfile.mkdtemp(prefix='tiling_bench_'))
  root.mkdir(parents=True, exist_ok=True)
  with Image.open(FLAGS.photo) as im:
    source = im.convert('RGB')
  checkpoints = make_checkpoints(root, np.asarray(source), FLAGS.keep)
  budget = FLAGS.max_memory
  shown = budget or f'{programs.default_max_memory() / 2**30:.2f} GiB (default)'
  print(
    f'jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cores, '
    f'{machine_memory() / 2**30:.0f} GiB; photo {Path(FLAGS.photo).name}; max_memory {shown}'
  )
  print('| photo | MP | mode | layout | tiles | peak RSS (GB) | wall (s) | model (s) |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  for size in FLAGS.sizes:
    w, h = (int(v) for v in size.split('x'))
    photo = root / f'photo_{w}x{h}.jpg'
    if not photo.exists():
      source.resize((w, h), Image.Resampling.BICUBIC).save(photo, quality=95)
    canvas = (-(-h // 128) * 128) * (-(-w // 128) * 128)
    for mode in FLAGS.modes:
      for layout in FLAGS.layouts:
        label = f'| {w}x{h} | {w * h / 1e6:.1f} | {mode} | {layout} |'
        need = BYTES_PER_PIXEL[mode] * canvas
        if layout == 'whole' and need > FLAGS.whole_limit * machine_memory():
          print(f'{label} - | does not fit ({need / 1e9:.1f} GB needed) | - | - |', flush=True)
          continue
        out = root / f'out_{mode}_{layout}'
        command = [
          sys.executable,
          '-m',
          'lmdvit_jax.deblur',
          f'--checkpoint={checkpoints[mode]}',
          str(photo),
          f'--output={out}',
        ]
        command += ['--capacity=1.0'] if mode == 'dense' else []
        command += ['--tile=0'] if layout == 'whole' else []
        command += [f'--max_memory={budget}'] if budget else []
        status, wall, rss, text = peak_rss_run(command)
        if status:
          last = text.strip().splitlines()[-1] if text.strip() else ''
          print(f'{label} - | failed ({status}: {last[:120]}) | {wall:.0f} | - |', flush=True)
          continue
        model_s = re.search(r'([0-9.]+) s per image', text)
        tiles = re.search(r'ran as tiles \(([0-9]+ tiles of [0-9x]+)', text)
        print(
          f'{label} {tiles.group(1) if tiles else "whole"} | {rss / 1e9:.2f} | {wall:.0f} | '
          f'{float(model_s.group(1)) if model_s else float("nan"):.1f} |',
          flush=True,
        )


if __name__ == '__main__':
  _define_flags()
  cli.run(main, quiet=True)
