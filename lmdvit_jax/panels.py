"""Pictures: evaluation panels (input | output | truth | mask | kept windows) and
decision-map overlays (written with `image_io.save_png`).

Images are float arrays [H, W, 3] in [0, 1]; kept maps are bool [H, W].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmdvit_jax.image_io import to_uint8
from lmdvit_jax.inference import DeblurResult

KEPT_TINT = np.array([1.0, 0.85, 0.2], np.float32)  # Amber outline colour.
MASK_TINT = np.array([1.0, 0.15, 0.1], np.float32)
PRUNED_DIM = 0.25  # Brightness left to pruned windows.
MIN_TILE_HEIGHT = 16  # Smaller tiles cannot show a kept window or a label.


def _grey(image: np.ndarray) -> np.ndarray:
  return np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=-1)


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Blur mask in red over the grey image.

  Args:
    image: [H, W, 3] float in [0, 1].
    mask: [H, W] or [H, W, 1], 1 = blurred.

  Returns:
    [H, W, 3] float32.
  """
  m = np.asarray(mask, np.float32).reshape(image.shape[:2] + (1,))
  base = 0.6 * _grey(image)
  return np.clip(base * (1 - 0.6 * m) + 0.6 * m * MASK_TINT, 0, 1).astype(np.float32)


def kept_overlay(image: np.ndarray, kept: np.ndarray) -> np.ndarray:
  """Kept windows at full brightness with an outline, pruned ones dimmed.

  Args:
    image: [H, W, 3] float in [0, 1].
    kept: [H, W] bool, True where the pixel's window was kept.

  Returns:
    [H, W, 3] float32.
  """
  kept = np.asarray(kept, bool)
  out = np.where(kept[..., None], image, PRUNED_DIM * image).astype(np.float32)
  # Outline the kept region so thin kept strips stay visible after down-scaling.
  edge = np.zeros_like(kept)
  edge[1:, :] |= kept[1:, :] != kept[:-1, :]
  edge[:, 1:] |= kept[:, 1:] != kept[:, :-1]
  out[edge] = KEPT_TINT
  return out


def _tile(image: np.ndarray, height: int) -> Image.Image:
  pil = Image.fromarray(to_uint8(image))
  if pil.height != height:
    width = max(1, round(pil.width * height / pil.height))
    pil = pil.resize((width, height), Image.Resampling.BOX)
  return pil


def grid(
  tiles: Sequence[tuple[str, np.ndarray]], tile_height: int = 192, columns: int | None = None
) -> Image.Image:
  """Labelled tiles on a grid.

  Args:
    tiles: (label, [H, W, 3] float image) pairs, filled row by row.
    tile_height: tiles taller than this are shrunk to it (aspect kept); smaller
      tiles are not enlarged.
    columns: tiles per row; default: at least 4, enough for about 3 rows.

  Returns:
    An RGB PIL image.
  """
  font = ImageFont.load_default()
  label_h = 16
  tile_height = min(tile_height, max(img.shape[0] for _, img in tiles))
  columns = columns or max(4, -(-len(tiles) // 3))
  pics = [(label, _tile(img, tile_height)) for label, img in tiles]
  tile_w = max(p.width for _, p in pics)
  gap = 4
  rows = -(-len(pics) // columns)
  cols = min(columns, len(pics))
  canvas = Image.new(
    'RGB',
    (cols * (tile_w + gap) + gap, rows * (tile_height + label_h + gap) + gap),
    (255, 255, 255),
  )
  draw = ImageDraw.Draw(canvas)
  for i, (label, pic) in enumerate(pics):
    r, c = divmod(i, columns)
    x = gap + c * (tile_w + gap)
    y = gap + r * (tile_height + label_h + gap)
    draw.text((x + 2, y + 1), label, fill=(0, 0, 0), font=font)
    canvas.paste(pic, (x, y + label_h))
  return canvas


def stage_kept_tiles(image: np.ndarray, result: DeblurResult) -> list[tuple[str, np.ndarray]]:
  """One kept-window overlay per pruning stage (its unshifted predicting block),
  labelled with the stage name and the fraction of windows kept."""
  tiles = []
  for block, kept, decision in zip(result.blocks, result.kept_maps(), result.decisions):
    if block.block == 0:
      frac = float(np.mean(decision))  # with a self-ensemble: over its passes
      tiles.append((f'{block.stage} kept {100 * frac:.0f}%', kept_overlay(image, kept)))
  return tiles


def evaluation_panel(
  blur: np.ndarray,
  restored: np.ndarray,
  sharp: np.ndarray,
  mask: np.ndarray,
  result: DeblurResult,
  tile_height: int = 192,
  columns: int | None = None,
) -> Image.Image:
  """input | output | ground truth | blur mask, then kept windows per pruning stage.

  Args:
    blur, restored, sharp: [H, W, 3] float in [0, 1].
    mask: [H, W, 1] blur mask.
    result: the `DeblurResult` of `blur` (for its decision maps).
  """
  tiles = [
    ('input', blur),
    ('output', restored),
    ('ground truth', sharp),
    ('blur mask', mask_overlay(sharp, mask)),
  ]
  return grid(tiles + stage_kept_tiles(blur, result), tile_height, columns)


def decision_panel(
  image: np.ndarray, result: DeblurResult, tile_height: int = 192, columns: int | None = None
) -> Image.Image:
  """input | output, then kept windows per pruning stage (no ground truth)."""
  tiles = [('input', image), ('output', result.restored)]
  return grid(tiles + stage_kept_tiles(image, result), tile_height, columns)
