"""The demo: a small LMD-ViT on synthetic local motion blur, scored on held-out photos.

`run(config, workdir)` puts a model in `workdir` and scores it on the held-out
set of `config.demo.data`:

* by default it installs the shipped demo weights (`WEIGHTS_DIR`, trained by
  `python demo.py --train` with `configs/demo.py`; the command, the seed and the
  training log lie beside them) as a checkpoint directory, in seconds;
* with `train=True` it trains from scratch with `training.train_and_evaluate`
  (resuming if the workdir already holds checkpoints).

Then it evaluates with `evaluation.evaluate` (capacity `'exact'`), prints a
per-image table and the demo's targets, and writes WORKDIR/demo_eval/
(metrics.json, table.md, panels/, summary.json, overview.png).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from lmdvit_jax import checkpointing, evaluation, files, panels
from lmdvit_jax.data import open_source

WEIGHTS_DIR = Path(__file__).resolve().parent / 'demo_weights'
PARAMS_FILE = 'params.npz'
# Shipped weights are these files and a README.md telling how they were made;
# run logs stay in the training workdir (the shipped runs' are in
# docs/demo_runs/). OVERRIDES_FILE, in a workdir, holds the `--config.*` flags
# of the training command (`run` writes it), which the README spells out.
OVERRIDES_FILE = 'overrides.json'
# What exports before this layout put beside the weights (an export removes them).
OLD_RECORD = ('metrics.jsonl', 'eval.jsonl', 'config.json', OVERRIDES_FILE)


# (metric key, label, requirement, threshold): what the demo must show on its
# held-out set. Gains are over the blurred input scored the same way.
TARGETS = (
    ('wpsnr_gain', 'weighted PSNR gain inside the blur mask (dB)', '>= 1.0', 1.0),
    ('psnr_gain', 'whole-image PSNR gain (dB)', '>= 0.3', 0.3),
    ('sharp_psnr', 'PSNR outside the blur mask (dB)', '>= 45', 45.0),
    ('prune_recall', 'pruning recall of blurred pixels', '>= 0.9', 0.9),
    ('prune_precision', 'pruning precision', '>= 0.6', 0.6),
)


def targets(mean: dict[str, float]) -> list[dict[str, Any]]:
  """Each target with its measured value and whether it is met."""
  values = dict(mean, wpsnr_gain=mean['wpsnr'] - mean['input_wpsnr'],
                psnr_gain=mean['psnr'] - mean['input_psnr'])
  rows = []
  for key, name, requirement, threshold in TARGETS:
    value = float(values[key])
    rows.append(dict(name=name, value=value, requirement=requirement,
                     met=bool(np.isfinite(value) and value >= threshold)))
  return rows


# ---------------------------------------------------------------------------
# Shipped weights.


def export_weights(checkpoint: str | Path, out_dir: str | Path = WEIGHTS_DIR,
                   self_ensemble: int = 1, **overrides: Any) -> Path:
  """Writes a checkpoint's params as `out_dir/params.npz` beside its model.json
  (with `overrides` of the model's keyword arguments, e.g. keep_threshold) and
  an inference.json with `self_ensemble`.

  Used once to ship the demo weights: `install_weights` reads them back.
  """
  kwargs, params = checkpointing.load_model(checkpoint)
  kwargs = {**kwargs, **overrides}
  flat = {'/'.join(str(k.key) for k in path): np.asarray(v, np.float32)
          for path, v in _flatten(params)}
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  files.write_bytes_atomic(out_dir / PARAMS_FILE, buffer.getvalue())
  files.write_json_atomic(out_dir / checkpointing.MODEL_FILE, kwargs)
  checkpointing.write_inference_settings(out_dir, {'self_ensemble': int(self_ensemble)})
  return out_dir


def _flatten(params):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_flatten_with_path(params)[0]


def load_weights(weights_dir: str | Path = WEIGHTS_DIR) -> tuple[dict[str, Any], Any]:
  """`(model_kwargs, params)` of shipped weights (model.json + params.npz)."""
  weights_dir = Path(weights_dir)
  kwargs = checkpointing.read_model_kwargs(weights_dir)
  path = weights_dir / PARAMS_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: the demo weights are missing; '
                            'retrain them with `python demo.py --train`')
  params: dict[str, Any] = {}
  with np.load(path) as data:
    for name in data.files:
      node = params
      *parents, leaf = name.split('/')
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = np.asarray(data[name], np.float32)
  return kwargs, params


def install_weights(workdir: str | Path, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
  """Makes `workdir` a checkpoint directory holding the shipped weights (and
  their inference.json)."""
  kwargs, params = load_weights(weights_dir)
  checkpointing.save_model(workdir, params, kwargs)
  checkpointing.write_inference_settings(
      workdir, checkpointing.read_inference_settings(weights_dir))
  return Path(workdir)


def calibrate_keep_threshold(checkpoint: str | Path, data: str, recall: float,
                             candidates=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                             self_ensemble: int = 1) -> tuple[float, list[dict[str, float]]]:
  """Chooses the inference keep threshold on validation data.

  The class-balanced pruning loss shifts the predictors' probabilities, so 0.5
  is not the threshold that keeps the blurred windows at the best precision.
  This picks the highest candidate whose pruning recall on `data` (split
  'val': photos in neither the training nor the held-out split) is at least
  `recall` (the best precision that still keeps the blurred windows), or the
  candidate with the highest recall if none reaches it. Scored as the demo
  then runs: with `self_ensemble` passes per image.

  Returns:
    The threshold and one row per candidate (recall, precision, kept fraction,
    weighted and whole-image PSNR gain, PSNR outside the mask).
  """
  from lmdvit_jax.inference import Deblurrer  # pylint: disable=g-import-not-at-top
  source = open_source(data, split='val')
  kwargs, params = checkpointing.load_model(checkpoint)
  rows = []
  for t in candidates:
    deblurrer = Deblurrer.from_kwargs(
        {**kwargs, 'keep_threshold': float(t), 'capacity': 'masked',
         'self_ensemble': self_ensemble}, params, warmup=False)
    m = evaluation.run(deblurrer, source)['mean']
    rows.append(dict(keep_threshold=float(t), recall=m['prune_recall'],
                     precision=m['prune_precision'], kept_fraction=m['kept_fraction'],
                     wpsnr_gain=m['wpsnr'] - m['input_wpsnr'], psnr_gain=m['psnr'] - m['input_psnr'],
                     sharp_psnr=m['sharp_psnr']))
  return choose_keep_threshold(rows, recall), rows


def choose_keep_threshold(rows: list[dict[str, float]], recall: float) -> float:
  """The highest `keep_threshold` of `rows` whose recall is at least `recall`,
  else the one with the highest recall."""
  good = [r for r in rows if r['recall'] >= recall]
  best = max(good, key=lambda r: r['keep_threshold']) if good else max(rows, key=lambda r: r['recall'])
  return best['keep_threshold']


# ---------------------------------------------------------------------------
# The picture.


def _zoom_box(mask: np.ndarray, pad: int = 12) -> tuple[slice, slice]:
  """The blurred region's bounding box, padded (the whole image if no blur)."""
  m = np.asarray(mask).reshape(mask.shape[:2]) > 0
  if not m.any():
    return slice(None), slice(None)
  ys, xs = np.nonzero(m)
  h, w = m.shape
  return (slice(max(0, ys.min() - pad), min(h, ys.max() + pad + 1)),
          slice(max(0, xs.min() - pad), min(w, xs.max() + pad + 1)))


def overview(samples: list[dict[str, np.ndarray]], restored: list[np.ndarray],
             kept: list[np.ndarray], records: list[dict[str, Any]],
             tile_height: int = 160):
  """One row per image: input, output and ground truth zoomed on the blurred
  region (labelled with weighted PSNR), then the windows the last pruning block
  kept over the whole image."""
  tiles = []
  for s, pred, k, r in zip(samples, restored, kept, records):
    box = _zoom_box(s['mask'])
    tiles += [
        (f'input {r["input_wpsnr"]:.2f} dB', s['blur'][box]),
        (f'output {r["wpsnr"]:.2f} dB', pred[box]),
        ('ground truth', s['sharp'][box]),
        (f'kept {100 * r["kept_fraction"]:.0f}% (mask {100 * r["mask_fraction"]:.0f}%)',
         panels.mask_overlay(s['blur'], s['mask']) * 0.4 + 0.6 * panels.kept_overlay(s['blur'], k)),
    ]
  return panels.grid(tiles, tile_height, columns=4)


# ---------------------------------------------------------------------------
# The run.


def run(config: ml_collections.ConfigDict, workdir: str | Path, *, train: bool = False,
        export: bool = False, weights_dir: str | Path = WEIGHTS_DIR,
        progress: bool = True, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Trains (or installs the shipped weights), evaluates and reports.

  With `export`, the workdir's model (trained here or already there) then
  replaces the shipped weights in `weights_dir`, with its training log.
  `overrides` (flat `{'optim.lr': 2e-4, ...}`: what the command line changed
  in the config file) are kept in the workdir when training, so that an export
  can write the training command down whole.

  Returns:
    The summary written to WORKDIR/demo_eval/summary.json.
  """
  workdir = Path(workdir)
  start = time.perf_counter()
  if train:
    from lmdvit_jax import training  # pylint: disable=g-import-not-at-top
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(workdir / OVERRIDES_FILE, dict(overrides or {}))
    training.train_and_evaluate(config, workdir)
    origin = f'trained here with {config.num_train_steps} steps'
  elif checkpointing.latest_step(workdir) is None:
    install_weights(workdir, weights_dir)
    origin = f'shipped weights ({Path(weights_dir).name}/)'
  else:
    origin = f'the checkpoint already in {workdir}'
  seconds_model = time.perf_counter() - start

  self_ensemble = int(config.demo.self_ensemble)
  keep_threshold, calibration = None, None
  if export and config.demo.calibration_data:
    keep_threshold, calibration = calibrate_keep_threshold(
        workdir, config.demo.calibration_data, float(config.demo.calibration_recall),
        self_ensemble=self_ensemble)
    print(f'Keep threshold {keep_threshold} chosen on {config.demo.calibration_data} '
          '(validation photos): ' + '; '.join(
              f'{r["keep_threshold"]}: recall {r["recall"]:.3f} precision {r["precision"]:.3f}'
              for r in calibration))

  out = workdir / 'demo_eval'
  n_panels = int(config.demo.num_panels)
  result = evaluation.evaluate(str(workdir), config.demo.data, str(out), split='test',
                               capacity='exact', keep_threshold=keep_threshold,
                               self_ensemble=self_ensemble,
                               num_panels=n_panels, progress=progress)
  mean, records = result['mean'], result['images']
  rows = targets(mean)
  outside = None
  if config.demo.get('outside_data'):
    scored = evaluation.evaluate(str(workdir), config.demo.outside_data, str(out / 'outside'),
                                 capacity='exact', keep_threshold=keep_threshold,
                                 self_ensemble=self_ensemble, num_panels=0, progress=progress)
    outside = {'data': config.demo.outside_data, 'count': scored['count'],
               'mean': scored['mean'], 'targets': targets(scored['mean'])}

  # The overview picture: the first few images, restored again for their maps.
  from lmdvit_jax.inference import Deblurrer, checkpoint_overrides, quantize  # pylint: disable=g-import-not-at-top
  overrides = checkpoint_overrides('exact', keep_threshold, self_ensemble=self_ensemble)
  deblurrer = Deblurrer.from_checkpoint(workdir, overrides=overrides, warmup=False)
  source = open_source(config.demo.data, split='test')
  shown = list(range(min(n_panels, len(source))))
  samples = [source[i] for i in shown]
  results = [deblurrer(s['blur']) for s in samples]
  if shown:
    picture = overview(samples, [quantize(r.restored) for r in results],
                       [r.kept_maps()[-1] for r in results], [records[i] for i in shown])
    panels.save_png(out / 'overview.png', picture, compress_level=6)

  summary = {
      'data': config.demo.data, 'count': result['count'], 'model': origin,
      'seconds_to_model': seconds_model, 'seconds_total': time.perf_counter() - start,
      'targets': rows, 'mean': mean, 'outside': outside,
      'keep_threshold': deblurrer.model.keep_threshold,
      'self_ensemble': self_ensemble,
      'calibration': calibration,
      'kept_fraction_per_block': [b['kept_fraction'] for b in result['blocks']],
      'images': [{k: r[k] for k in ('name', 'input_psnr', 'psnr', 'input_wpsnr', 'wpsnr',
                                    'sharp_psnr', 'kept_fraction', 'prune_recall',
                                    'prune_precision', 'seconds')} for r in records],
  }
  files.write_json_atomic(out / 'summary.json', summary)
  print(report(summary, out))
  if export:
    if not (workdir / 'metrics.jsonl').is_file():
      raise FileNotFoundError(f'{workdir} has no training log (metrics.jsonl): export the '
                              'workdir of a `python demo.py --train` run')
    export_weights(workdir, weights_dir, self_ensemble=self_ensemble,
                   **({} if keep_threshold is None else {'keep_threshold': keep_threshold}))
    write_training_record(workdir, weights_dir, summary)
    print(f'Exported the model of {workdir} to {weights_dir}')
  return summary


def _f(value: float, digits: int = 2) -> str:
  return '-' if value is None or not np.isfinite(value) else f'{value:.{digits}f}'


def report(summary: dict[str, Any], out: Path) -> str:
  """The text a person reads at the end of the demo."""
  passes = summary.get('self_ensemble', 1)
  ensemble = (f'; {passes} passes per image (flipped and transposed copies, averaged)'
              if passes > 1 else '')
  lines = [f'\nHeld-out set: {summary["count"]} images of {summary["data"]} '
           f'(photos never seen in training); model: {summary["model"]}{ensemble}.', '',
           '| image | PSNR in -> out | weighted PSNR in -> out | PSNR outside mask | kept | s |',
           '| --- | --- | --- | --- | --- | --- |']
  for r in summary['images']:
    lines.append(f'| {r["name"]} | {_f(r["input_psnr"])} -> {_f(r["psnr"])} | '
                 f'{_f(r["input_wpsnr"])} -> {_f(r["wpsnr"])} | {_f(r["sharp_psnr"])} | '
                 f'{100 * r["kept_fraction"]:.0f}% | {_f(r["seconds"], 3)} |')
  m = summary['mean']
  lines.append(f'| **mean** | {_f(m["input_psnr"])} -> {_f(m["psnr"])} | '
               f'{_f(m["input_wpsnr"])} -> {_f(m["wpsnr"])} | {_f(m["sharp_psnr"])} | '
               f'{100 * m["kept_fraction"]:.0f}% | {_f(m["seconds_per_image"], 3)} |')
  lines += ['', '| target | measured | required | met |', '| --- | --- | --- | --- |']
  for t in summary['targets']:
    lines.append(f'| {t["name"]} | {_f(t["value"], 3)} | {t["requirement"]} | '
                 f'{"PASS" if t["met"] else "FAIL"} |')
  met = sum(t['met'] for t in summary['targets'])
  lines += ['', f'{met} of {len(summary["targets"])} targets met on the held-out set.']
  if summary.get('outside'):
    o, m = summary['outside'], summary['outside']['mean']
    lines += ['', f'Outside set: {o["count"]} images of {o["data"]} (other photos, shapes, '
              'motion, noise and JPEG than training): PSNR '
              f'{_f(m["input_psnr"])} -> {_f(m["psnr"])}, weighted PSNR {_f(m["input_wpsnr"])} -> '
              f'{_f(m["wpsnr"])}.', '', '| target | measured | required | met |',
              '| --- | --- | --- | --- |']
    for t in o['targets']:
      lines.append(f'| {t["name"]} | {_f(t["value"], 3)} | {t["requirement"]} | '
                   f'{"PASS" if t["met"] else "FAIL"} |')
    lines += ['', f'{sum(t["met"] for t in o["targets"])} of {len(o["targets"])} targets met '
              'on the outside set.']
  lines += ['', f'Total time {summary["seconds_total"]:.0f} s.',
            f'Picture (input | output | ground truth, zoomed on the blur; kept windows): '
            f'{out / "overview.png"}',
            f'Per-image panels and metrics: {out}']
  return '\n'.join(lines)


def override_flags(workdir: str | Path) -> list[str]:
  """The `--config.KEY=VALUE` flags a training run in `workdir` was started
  with (OVERRIDES_FILE), `init_from` shown as FIRST. Workdirs trained before
  that file was kept give their seed and step count, the flags those runs used."""
  workdir = Path(workdir)
  path = workdir / OVERRIDES_FILE
  if path.is_file():
    overrides = json.loads(path.read_text())
  else:
    config = json.loads((workdir / 'config.json').read_text())
    overrides = {k: config.get(k) for k in ('init_from', 'seed', 'num_train_steps')}
    if not overrides['init_from']:
      overrides = {}
  out = []
  for key, value in sorted(overrides.items(), key=lambda kv: kv[0] != 'init_from'):
    value = 'FIRST' if key == 'init_from' and value else value
    text = value if isinstance(value, str) else repr(tuple(value) if isinstance(value, list) else value)
    out.append(f'--config.{key}={_shell_word(text)}')
  return out


def _shell_word(text: str) -> str:
  """`text` as one shell word: bare if safe, else in double quotes where they
  suffice (readable for tuples and data specs), else single-quoted."""
  if re.fullmatch(r'[\w.,:/@%+=-]+', text):
    return text
  return f'"{text}"' if not set(text) & set('"$`\\!') else shlex.quote(text)


def write_training_record(workdir: str | Path, out_dir: str | Path,
                          summary: dict[str, Any]) -> None:
  """Writes `out_dir/README.md` for weights exported from the training run in
  `workdir`: the command that trained it (weights it continued, `init_from`,
  shown as FIRST, never as a path of this machine), its data, seed and steps,
  and the held-out result and keep-threshold calibration at export.

  The record files older exports put beside the weights (`OLD_RECORD`, and
  `init_*` copies of earlier runs') are removed; the run's logs stay in
  `workdir`.
  """
  workdir, out_dir = Path(workdir), Path(out_dir)
  for stale in out_dir.iterdir():
    if stale.is_file() and (stale.name in OLD_RECORD or stale.name.startswith('init_')):
      stale.unlink()
  config = json.loads((workdir / 'config.json').read_text())
  sources = (config.get('data') or {}).get('sources') or []
  steps = (f'seed {config.get("seed")}, {config.get("num_train_steps")} steps, batch '
           f'{config.get("batch_size")} of {config.get("patch_size")}x{config.get("patch_size")} '
           'crops' + (f' of `{"`, `".join(sources)}`' if sources else ''))
  command = ' '.join(['python demo.py --train --workdir=WORKDIR', *override_flags(workdir)])
  model = 'The small LMD-ViT of `configs/demo.py`'
  if config.get('init_from'):
    how = (f'{model}, trained on synthetic local blur by the project\'s own commands, on a '
           'CPU, continuing other weights (FIRST):\n\n'
           '    python demo.py --train --workdir=FIRST ...              # the run before\n'
           f'    {command}\n'
           '    python demo.py --workdir=WORKDIR --export_weights       # scores, exports\n\n'
           f'This run: {steps}, learning-rate schedule (warmup, cosine) started anew. ')
  else:
    how = (f'{model}, trained from scratch on synthetic local blur by the project\'s own '
           'command, on a CPU:\n\n'
           f'    {command}   # trains (resumable)\n'
           '    python demo.py --workdir=WORKDIR --export_weights       # scores, exports\n\n'
           f'(`--train --export_weights` does both in one run). {steps}. ')
  m = summary['mean']
  files.write_bytes_atomic(out_dir / 'README.md', (
      '# Demo weights\n\n' + how +
      '`model.json` holds the model\'s keyword arguments, `inference.json` how it runs, '
      '`params.npz` the params (float32).\n\n'
      f'Held-out result at export ({summary["count"]} images of `{summary["data"]}`): '
      f'PSNR {m["input_psnr"]:.2f} -> {m["psnr"]:.2f} dB, weighted PSNR '
      f'{m["input_wpsnr"]:.2f} -> {m["wpsnr"]:.2f} dB, PSNR outside the mask '
      f'{m["sharp_psnr"]:.2f} dB, pruning recall {m["prune_recall"]:.3f}, precision '
      f'{m["prune_precision"]:.3f}, keep threshold {summary["keep_threshold"]}' + (
      '' if summary.get('self_ensemble', 1) == 1 else
      f', with {summary["self_ensemble"]} passes per image (`self_ensemble` in `inference.json`: '
      'flipped and transposed copies, outputs averaged)') + '.\n' + (
      '' if not summary['calibration'] else
      '\nThe keep threshold was chosen at export on validation images (photos in neither '
      'the training nor the held-out split) '
      '(`calibrate_keep_threshold` in `lmdvit_jax/demo.py`):\n\n'
      '| keep threshold | recall | precision | kept | weighted PSNR gain (dB) | '
      'whole-image PSNR gain (dB) | PSNR outside (dB) |\n'
      '| --- | --- | --- | --- | --- | --- | --- |\n') + ''.join(
          f'| {r["keep_threshold"]} | {r["recall"]:.3f} | {r["precision"]:.3f} | '
          f'{r["kept_fraction"]:.3f} | {r["wpsnr_gain"]:+.2f} | {r["psnr_gain"]:+.2f} | '
          f'{r["sharp_psnr"]:.2f} |\n'
          for r in summary['calibration'] or [])).encode())
