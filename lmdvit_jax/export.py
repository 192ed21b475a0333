r"""Ships a checkpoint as one file: the compiled model, serialized with `jax.export`.

    python -m lmdvit_jax.export --checkpoint ckpt/lmdvit --size 1436x2152 \
        --output lmdvit.jaxexport [--batch 1] [--platforms cpu,cuda,tpu]

FILE holds the StableHLO program of the whole pipeline for images of one size:
centred zero padding to the window grid, the model (every pass of its
self-ensemble, pruned as the checkpoint's settings or the flags say), crop
and clamp, lowered for every platform of `--platforms` at once. FILE.json
says what it takes and returns. Running it needs jax alone:

    import jax, numpy as np
    exported = jax.export.deserialize(open('lmdvit.jaxexport', 'rb').read())
    images = np.zeros(exported.in_avals[0].shape, np.float32)  # [N, H, W, 3] in [0, 1]
    out = exported.call(images)
    out['restored']  # [N, H, W, 3]; out['kept']: per pruning block, [N, gh, gw] keep maps

`load(FILE)` does the same with one-line errors: a missing file, or a damaged
or truncated one, named as such.

The params are embedded in the program as constants, not taken as an
argument: the file is all there is to ship and to load (no second file whose
tree must match), at the price of one export per set of weights. Nothing else
in it grows with the image (the shifted windows' region labels are computed
in the program), so the file is about as large as the params at any size
(218 MB for the released model in float32; 12.4 MB for the 12.8 MB demo
weights at 4000x6000).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
import re
from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from lmdvit_jax import cli, ensemble, files, inference, tiling

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def parse_size(text: str) -> tuple[int, int]:
  """'HxW' -> (H, W)."""
  height, sep, width = str(text).lower().partition('x')
  try:
    size = (int(height), int(width))
  except ValueError:
    size = None
  if not sep or size is None or min(size) < 1:
    raise ValueError(f'--size must be HEIGHTxWIDTH in pixels (e.g. 1436x2152), got {text!r}')
  return size


def parse_platforms(text: str | list[str]) -> tuple[str, ...]:
  names = tuple(
    p.strip().lower() for p in (text.split(',') if isinstance(text, str) else text) if p.strip()
  )
  if not names or any(p not in PLATFORMS for p in names):
    raise ValueError(
      f'--platforms must be a comma-separated subset of {",".join(PLATFORMS)}, got {text!r}'
    )
  return names


class LoweringError(ValueError):
  """A program does not lower for a platform; the message names the platform
  and, where jax says, the operation."""


def _what_failed(error: BaseException) -> str:
  """The operation a lowering error is about, in one line: the custom call
  jax cannot serialize (and the op it came from), else the error's first line."""
  text = str(error)
  target = re.search(r'custom_call @([\w.]+)', text)
  if target:
    op = re.search(r'loc\("[^"]*/([\w.\-]+)"', text)
    return (
      f'custom call {target.group(1)}{f" (op {op.group(1)})" if op else ""} has no '
      'compatibility guarantee on this platform'
    )
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  return f'{type(error).__name__}: {lines[0][:300]}' if lines else type(error).__name__


def lower(fn: Any, *args: Any, platforms: tuple[str, ...]) -> jax.export.Exported:
  """`jax.export` of `fn` (jitted, shardings and donation as it was built) on
  `args` (arrays or `jax.ShapeDtypeStruct`s) for every platform at once.

  Raises:
    LoweringError: naming the first platform that fails and the error's first
      line (which names the primitive or custom call jax could not lower).
  """
  fn = fn if hasattr(fn, 'trace') else jax.jit(fn)
  try:
    return jax.export.export(fn, platforms=platforms)(*args)
  except Exception as e:
    error, failing = e, ','.join(platforms)
    for platform in platforms if len(platforms) > 1 else ():
      try:
        jax.export.export(fn, platforms=(platform,))(*args)
      except Exception as alone:
        error, failing = alone, platform
        break
    raise LoweringError(f'lowering for {failing} failed: {_what_failed(error)}') from e


def _pipeline(
  deblurrer: inference.Deblurrer, geometry: tiling.PadGeometry, images: jax.Array
) -> dict[str, Any]:
  g = geometry
  x = jnp.pad(
    images,
    (
      (0, 0),
      (g.top, g.padded_height - g.height - g.top),
      (g.left, g.padded_width - g.width - g.left),
      (0, 0),
    ),
  )
  restored, kept, dropped = ensemble.forward(
    deblurrer.model, deblurrer.params, x, deblurrer.self_ensemble, deblurrer.matmul_precision
  )
  return {
    'restored': restored[:, g.top : g.top + g.height, g.left : g.left + g.width],
    'kept': kept,
    'dropped': dropped,
  }


def export(
  deblurrer: inference.Deblurrer,
  height: int,
  width: int,
  batch: int = 1,
  platforms: tuple[str, ...] = ('cpu',),
) -> jax.export.Exported:
  """The `jax.export` of `deblurrer`'s pipeline on [batch, height, width, 3]
  float32 images, its params embedded, lowered for `platforms`.

  Raises:
    ValueError: a bad size, batch or platform. LoweringError: see `lower`.
  """
  if batch < 1:
    raise ValueError(f'--batch must be at least 1, got {batch}')
  platforms = parse_platforms(list(platforms))
  fn = jax.jit(functools.partial(_pipeline, deblurrer, deblurrer.geometry(height, width)))
  return lower(
    fn, jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32), platforms=platforms
  )


def describe(exported: jax.export.Exported, deblurrer: inference.Deblurrer) -> dict[str, Any]:
  """What FILE.json records: input, padding, outputs, platforms, model."""
  n, h, w, _ = exported.in_avals[0].shape
  g = deblurrer.geometry(h, w)
  model = deblurrer.model
  return {
    'input': {'shape': [n, h, w, 3], 'dtype': 'float32', 'layout': 'NHWC', 'range': [0.0, 1.0]},
    'padding': {
      'canvas': [g.padded_height, g.padded_width],
      'top': g.top,
      'left': g.left,
      'value': 0.0,
      'note': 'done inside the program',
    },
    'outputs': {
      'restored': f'[{n}, {h}, {w}, 3] float32 in [0, 1]',
      'kept': 'per predicting block (network order) [N, gh, gw] float32 keep maps over '
      'the window grid of the padded canvas (shares of passes with a self-ensemble)',
      'dropped': 'per predicting block [N] int32 kept windows a fixed capacity dropped',
    },
    'blocks': [
      {'stage': b.stage, 'block': b.block, 'shifted': b.shifted} for b in deblurrer.blocks
    ],
    'platforms': list(exported.platforms),
    'params': 'embedded as constants',
    'self_ensemble': deblurrer.self_ensemble,
    'matmul_precision': deblurrer.matmul_precision,
    'model': model.describe(),
    'jax': jax.__version__,
  }


def write(exported: jax.export.Exported, meta: dict[str, Any], path: str | os.PathLike) -> None:
  """FILE and FILE.json, each written atomically."""
  path = Path(path)
  files.write_bytes_atomic(path, bytes(exported.serialize()))
  files.write_json_atomic(path.with_name(path.name + '.json'), meta)


def load(path: str | os.PathLike) -> jax.export.Exported:
  """Reads an exported model, with one-line errors for a missing or damaged file."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no exported model at {path}')
  try:
    return jax.export.deserialize(bytearray(path.read_bytes()))
  except Exception as e:
    raise ValueError(
      f'{path} is not a jax.export file or is damaged ({type(e).__name__}); export it again'
    ) from None


def run(exported: jax.export.Exported, images: np.ndarray) -> dict[str, Any]:
  """Calls an exported model after checking `images` against what it takes."""
  want = exported.in_avals[0]
  images = np.asarray(images)
  if images.shape != tuple(want.shape) or images.dtype != np.float32:
    raise ValueError(
      f'this exported model takes {want.dtype}{list(want.shape)} images '
      f'(N, H, W, 3 in [0, 1]), got {images.dtype}{list(images.shape)}: '
      'export it again with --size and --batch of these images'
    )
  return exported.call(images)


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
  """`path` if a file can be written there: not a folder, not an existing
  file unless `overwrite`, in a writable folder (created by the write)."""
  out = Path(path)
  if out.is_dir():
    raise IsADirectoryError(f'--output {out} is a folder; give a file name')
  if out.exists() and not overwrite:
    raise FileExistsError(f'--output {out} exists; give --overwrite to replace it')
  files.check_writable_dir(out.parent, '--output folder')
  return out


def _define_flags() -> None:
  cli.define_inference_flags(tiling=False)
  flags.DEFINE_string('size', None, 'Image size HEIGHTxWIDTH in pixels (before padding).')
  flags.DEFINE_integer('batch', 1, 'Images per call.')
  flags.DEFINE_string('platforms', 'cpu,cuda,tpu', f'Comma-separated, of {",".join(PLATFORMS)}.')
  flags.DEFINE_string('output', None, 'The file to write (and FILE.json beside it).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output file.')


def main(argv: list[str]) -> None:
  fl = flags.FLAGS
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  for name in ('checkpoint', 'size', 'output'):
    if not fl[name].value:
      raise ValueError(f'--{name} is required')
  height, width = parse_size(fl.size)
  platforms = parse_platforms(fl.platforms)
  out = check_output(fl.output, fl.overwrite)
  deblurrer = inference.Deblurrer.from_checkpoint(
    fl.checkpoint, fl.step, cli.inference_settings(), warmup=False
  )
  exported = export(deblurrer, height, width, fl.batch, platforms)
  write(exported, describe(exported, deblurrer), out)
  print(
    f'Wrote {out} ({out.stat().st_size / 2**20:.1f} MB, {",".join(platforms)}; '
    f'[{fl.batch}, {height}, {width}, 3] float32 in, restored and keep maps out) and '
    f'{out.name}.json'
  )


if __name__ == '__main__':
  _define_flags()
  cli.run(main, quiet=True)
