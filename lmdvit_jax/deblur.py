r"""Deblurs image files of any size with an LMD-ViT checkpoint.

  python -m lmdvit_jax.deblur --checkpoint ckpt/lmdvit photo.jpg shots/ --output out/

INPUT arguments are image files or folders (searched recursively). Results are
PNG files under --output: a folder argument's images keep their path relative to
it, a file argument is written under its own name, with the suffix .png.
--overlays also writes NAME.decisions.png: the windows each pruning stage kept.

Formats: RGB and grey, 8 and 16 bit (16-bit input gives 16-bit output: grey
PNG and TIFF through Pillow; RGB and RGBA PNG through libspng and TIFF
through tifffile, as Pillow decodes those to 8 bits), float grey TIFF
(values outside [0, 1] are clipped, with a warning), alpha (kept aside and
put back unchanged), palette (written as RGB or RGBA). JPEG orientation tags
are applied. A file that cannot be read is reported on stderr with its name; the
other files are still processed and the exit status is 1. Every output is
written to a temporary file and renamed, never left half-written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
import sys
import time

from absl import app, flags
import numpy as np
from PIL import Image
from tqdm import tqdm

from lmdvit_jax import checkpointing, cli, compilation_cache, files, image_io, panels
from lmdvit_jax.errors import DataError, OutOfMemoryError
from lmdvit_jax.inference import Deblurrer
from lmdvit_jax.inference_settings import InferenceSettings


def collect_inputs(
  inputs: Sequence[str], exclude: Path | None = None
) -> tuple[list[tuple[Path, Path]], list[str]]:
  """(input file, output path relative to --output) pairs, and error messages.

  Folders are searched recursively for image suffixes; files are taken as given.
  Two inputs that would write the same output: the second is an error.
  """
  jobs: list[tuple[Path, Path]] = []
  errors: list[str] = []
  taken: dict[str, Path] = {}
  for arg in inputs:
    path = Path(arg)
    if path.is_dir():
      found = [
        f
        for f in sorted(path.rglob('*'))
        if f.is_file()
        and f.suffix.lower() in image_io.IMAGE_SUFFIXES
        and not (exclude is not None and exclude in f.resolve().parents)
      ]
      if not found:
        errors.append(f'{arg}: no image files in this folder')
      pairs = [(f, f.relative_to(path).with_suffix('.png')) for f in found]
    elif path.is_file():
      pairs = [(path, Path(path.name).with_suffix('.png'))]
    else:
      errors.append(f'{arg}: no such file or folder')
      continue
    for src, rel in pairs:
      key = rel.as_posix().lower()
      if key in taken:
        errors.append(f'{src}: skipped, its output {rel} is already written for {taken[key]}')
        continue
      taken[key] = src
      jobs.append((src, rel))
  return jobs, errors


def overwrites(jobs: Sequence[tuple[Path, Path]], output: Path, overlays: bool) -> list[str]:
  """'output <- input' for every planned output that is one of the input files."""
  inputs = {src.resolve(): src for src, _ in jobs}
  clash = []
  for src, rel in jobs:
    targets = [output / rel] + ([output / rel.with_suffix('.decisions.png')] if overlays else [])
    for target in targets:
      if target.resolve() in inputs:
        clash.append(
          f'{target} would replace input {inputs[target.resolve()]} (the result of {src})'
        )
  return clash


def deblur_files(
  deblurrer: Deblurrer,
  jobs: Sequence[tuple[Path, Path]],
  output: Path,
  overlays: bool = False,
  progress: bool = True,
) -> tuple[list[str], list[float], list[str]]:
  """Deblurs each (input, relative output) pair; returns (errors, seconds per
  image, how each tiled image was split)."""
  errors, seconds, tiled = [], [], []
  for src, rel in tqdm(jobs, desc='deblur', unit='img', disable=not progress):
    try:
      loaded = image_io.read_image(src)
      result = deblurrer(loaded.rgb)
      seconds.append(result.seconds)
      if result.tiles is not None:
        tiled.append(result.tiles.describe())
      files.write_bytes_atomic(output / rel, image_io.encode_result(result.restored, loaded))
      if overlays:
        image_io.save_png(
          output / rel.with_suffix('.decisions.png'),
          panels.decision_panel(loaded.rgb, result),
          compress_level=6,
        )
    except (DataError, OSError, ValueError, OutOfMemoryError, Image.DecompressionBombError) as e:
      # DataError messages already name the file; OSError ones usually do too.
      msg = str(e) if str(src) in str(e) else f'{src}: {e}'
      errors.append(msg)
      with tqdm.external_write_mode(file=sys.stderr):
        cli.error(msg)
  return errors, seconds, tiled


def run(
  checkpoint: str,
  inputs: Sequence[str],
  output: str,
  settings: InferenceSettings | None = None,
  *,
  step: int | None = None,
  overlays: bool = False,
  progress: bool = True,
) -> int:
  """Deblurs `inputs` (files or folders) into `output`; returns the exit status.

  0 when every file was deblurred; 1 when some input was missing, unreadable
  or ran out of memory (the others are still written); 2 when nothing was
  done: a bad setting, an output that is not a writable folder or would mix
  with the inputs, a checkpoint that cannot be loaded, or a memory budget no
  image fits in (all checked before any image is read). `settings` (capacity,
  self-ensemble, tiling, memory budget...) default to the checkpoint's.
  """
  out = Path(output)
  try:
    if inside := [
      a
      for a in inputs
      if Path(a).is_dir()
      and (Path(a).resolve() == out.resolve() or out.resolve() in Path(a).resolve().parents)
    ]:
      raise ValueError(
        f'--output {out} is the input folder {inside[0]} or holds it: results '
        'would mix with the photos; choose another --output'
      )
    files.check_writable_dir(out)
  except (OSError, ValueError) as e:
    cli.error(str(e))
    return 2
  jobs, errors = collect_inputs(inputs, exclude=out.resolve())
  if clash := overwrites(jobs, out, overlays):
    cli.error(
      f'refusing to write over input files: {"; ".join(clash[:5])}'
      f'{" ..." if len(clash) > 5 else ""} (choose another --output)'
    )
    return 2
  for message in errors:
    cli.error(message)
  if not jobs:
    return 1
  try:
    if not Path(checkpoint).is_dir():
      raise FileNotFoundError(f'checkpoint directory not found: {checkpoint}')
    # No warm-up: timings here are informative only, and it would double the
    # work of the first image of every size.
    deblurrer = Deblurrer.for_command(checkpoint, step, settings, warmup=False, progress=progress)
  except (FileNotFoundError, ValueError, checkpointing.CheckpointError) as e:
    cli.error(str(e))
    return 2
  start = time.perf_counter()
  failed, seconds, tiled = deblur_files(deblurrer, jobs, out, overlays, progress)
  wall = time.perf_counter() - start
  errors += failed
  done = len(jobs) - len(failed)
  mean = (
    f' in {wall:.1f} s: {np.mean(seconds):.3f} s per image computing, {wall / done:.1f} s '
    'per image in all (compiling each new size, reading and writing included)'
    if seconds
    else ''
  )
  split = f'; {len(tiled)} ran as tiles ({tiled[-1]})' if tiled else ''
  print(f'Deblurred {done} of {len(jobs)} images into {out}{mean}{split}.')
  if errors:
    print(f'{len(errors)} error(s), listed above.', file=sys.stderr)
    return 1
  return 0


def _define_flags() -> None:
  # Defined only when run as a program: importing this module (tests,
  # evaluate.py) must not claim flag names.
  cli.define_inference_flags()
  flags.DEFINE_string('output', None, 'Output folder.')
  flags.DEFINE_bool(
    'overlays', False, 'Also write NAME.decisions.png with the windows kept by each pruning stage.'
  )


def main(argv: list[str]) -> None:
  fl = flags.FLAGS
  for name in ('checkpoint', 'output'):
    if not fl[name].value:
      raise app.UsageError(f'--{name} is required.')
  if len(argv) < 2:
    raise app.UsageError('Give at least one image file or folder.')
  compilation_cache.enable()
  sys.exit(
    run(
      fl.checkpoint,
      argv[1:],
      fl.output,
      cli.inference_settings(),
      step=fl.step,
      overlays=fl.overlays,
    )
  )


if __name__ == '__main__':
  _define_flags()
  cli.run(main, quiet=True)
