"""Training input pipeline: weighted mixture -> crops -> per-process shard ->
local batches (grain) -> global batches sharded over the mesh axis `data`.

Every random choice is a function of (seed, global element index): shuffles are
index permutations and the crop/flip rng of element i is derived from (seed, i).
The iterator state is therefore just a position, which makes resuming from a
checkpoint exact and independent of thread timing.

    it = make_train_iterator(['reloblur:/data/ReLoBlur', 'gopro:/data/GoPro'],
                             [0.7, 0.3], patch_size=256, batch_size=12, seed=0)
    batch = next(it)      # {'blur', 'sharp': [12, 256, 256, 3], 'mask': [..., 1]}
    state = it.get_state()  # a small JSON-able dict; it.set_state(state) resumes.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
import functools
from typing import Any

import grain
import jax
import numpy as np

from lmdvit_jax.data import crops
from lmdvit_jax.data.examples import IMAGE_KEYS, Source, to_sample
from lmdvit_jax.data.specs import open_source
from lmdvit_jax.mesh import DATA_AXIS, make_mesh

SYNTHETIC_TRAIN_COUNT = 1_000_000  # Distinct synthetic triples before repeating.
_ENDLESS = 1 << 48  # Elements in a training stream: never reached.


class _Epochs(Sequence):
  """A Source as an endless sequence of uint8 examples, reshuffled every epoch.

  Element i is example perm_e[i mod n] of epoch e = i // n, with perm_e drawn
  from (seed, e). (grain's own index shuffle costs milliseconds per element on
  small datasets; a cached permutation per epoch costs nothing.)
  """

  def __init__(self, source: Source, seed: int):
    self.source, self.seed, self.n = source, seed, len(source)
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return self.n * max(1, _ENDLESS // self.n)

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      self._perms = {epoch: perm, **{e: p for e, p in self._perms.items() if e == epoch - 1}}
    return perm

  def __getitem__(self, index: int):  # type: ignore[override]  # no slices
    epoch, position = divmod(int(index), self.n)
    return self.source.example(int(self._perm(epoch)[position]))

  def __getstate__(self):
    return {**self.__dict__, '_perms': {}}


class _ProcessRows(Sequence):
  """One process's rows of each global batch of `dataset`, in order, from
  global batch `first_batch` on.

  Element j is row j mod L of this process's L rows of global batch
  first_batch + j // L.
  """

  def __init__(
    self,
    dataset: Sequence,
    batch_size: int,
    local_batch_size: int,
    process: int,
    first_batch: int = 0,
  ):
    self.dataset, self.batch_size, self.local = dataset, batch_size, local_batch_size
    self.offset = process * local_batch_size
    self.first_batch = first_batch

  def __len__(self) -> int:
    return (len(self.dataset) // self.batch_size - self.first_batch) * self.local

  def __getitem__(self, index: int):  # type: ignore[override]  # no slices
    batch, row = divmod(int(index), self.local)
    return self.dataset[(self.first_batch + batch) * self.batch_size + self.offset + row]


def _augment(
  example, rng: np.random.Generator, *, patch_size: int, blur_prob: float, flips: bool
) -> dict[str, np.ndarray]:
  example = crops.blur_aware_crop(rng, example, patch_size, blur_prob)
  if flips:
    example = crops.random_flips(rng, example)
  sample = to_sample({k: example[k] for k in IMAGE_KEYS})
  return {k: np.ascontiguousarray(v) for k, v in sample.items()}


def _stack(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([s[k] for s in samples]) for k in IMAGE_KEYS}


def open_train_sources(specs: Sequence[str | Source], patch_size: int) -> list[Source]:
  """Opens training specs (split 'train'; synthetic images of side `patch_size`)."""
  return [
    s
    if isinstance(s, Source)
    else open_source(
      s, split='train', synthetic_size=patch_size, synthetic_count=SYNTHETIC_TRAIN_COUNT
    )
    for s in specs
  ]


def train_dataset(
  sources: Sequence[str | Source],
  weights: Sequence[float] | None = None,
  *,
  patch_size: int,
  seed: int,
  blur_prob: float = 0.5,
  flips: bool = True,
) -> grain.MapDataset:
  """Infinite, global (unsharded) stream of augmented float32 samples.

  Element i: {'blur', 'sharp': [P, P, 3], 'mask': [P, P, 1]}, a blur-aware crop
  from source j with probability weights[j] / sum(weights). Each source is
  reshuffled every epoch.
  """
  if not sources:
    raise ValueError('At least one training source is needed.')
  weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
  if len(weights) != len(sources):
    raise ValueError(f'{len(sources)} sources but {len(weights)} weights.')
  if any(w < 0 for w in weights) or not sum(weights) > 0:
    raise ValueError(f'Weights must be non-negative with a positive sum, got {weights}.')
  opened = [(s, w) for s, w in zip(open_train_sources(sources, patch_size), weights) if w > 0]
  streams = [
    grain.MapDataset.source(_Epochs(src, seed=seed * 1009 + i)) for i, (src, _) in enumerate(opened)
  ]
  mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, [w for _, w in opened])
  augment = functools.partial(_augment, patch_size=patch_size, blur_prob=blur_prob, flips=flips)
  return mixed.random_map(augment, seed=seed)


def data_sharding(
  mesh: jax.sharding.Mesh | None = None, axis: str = DATA_AXIS
) -> jax.sharding.NamedSharding:
  """Batch-axis sharding over `axis`; default mesh: all devices on `data`."""
  if mesh is None:
    mesh = make_mesh(axis=axis)
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def to_global(
  local_batch: Mapping[str, np.ndarray],
  sharding: jax.sharding.NamedSharding,
  global_batch_size: int,
) -> dict[str, jax.Array]:
  """This process's rows [B / num_processes, ...] -> global jax.Arrays [B, ...]."""
  return {
    k: jax.make_array_from_process_local_data(sharding, v, (global_batch_size,) + v.shape[1:])
    for k, v in local_batch.items()
  }


def _ensure_absl_flags_parsed() -> None:
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class GlobalBatchIterator:
  """Iterator of global batches with checkpointable state.

  `next(it)` -> {'blur', 'sharp': float32 [B, P, P, 3], 'mask': float32
  [B, P, P, 1]} as jax.Arrays sharded on their first axis over `data`. Each
  process reads only its own rows: process p of n, rows p*B/n .. (p+1)*B/n - 1
  of every global batch, so the global batches, in order, are the same for
  any number of processes. `get_state()` is the position, {'batches': the
  global batches read}: the same in every process, and it resumes a job of
  any number of processes (a run stopped on 8 hosts goes on on 4 with the
  batches it would have seen). `set_state` restores it.
  """

  def __init__(
    self,
    dataset: grain.MapDataset,
    *,
    batch_size: int,
    sharding: jax.sharding.NamedSharding,
    num_threads: int = 2,
    prefetch: int | None = None,
    worker_count: int = 0,
  ):
    nproc = jax.process_count()
    axes = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
    data_shards = int(np.prod([sharding.mesh.shape[a] for a in axes if a is not None]))
    if batch_size % data_shards or batch_size % nproc:
      raise ValueError(
        f'batch_size {batch_size} must be divisible by the {data_shards} '
        f'shards of the data axis and by the {nproc} processes.'
      )
    self.batch_size = batch_size
    self.local_batch_size = batch_size // nproc
    self.sharding = sharding
    self._dataset = dataset
    self._options = grain.ReadOptions(
      num_threads=max(1, num_threads), prefetch_buffer_size=prefetch or 2 * self.local_batch_size
    )
    self._worker_count = worker_count
    self._batches = 0
    self._local = self._stream(0)

  def _stream(self, first_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches from global batch `first_batch` on."""
    rows = _ProcessRows(
      self._dataset, self.batch_size, self.local_batch_size, jax.process_index(), first_batch
    )
    stream = grain.MapDataset.source(rows).to_iter_dataset(self._options)
    if self._worker_count > 0:
      _ensure_absl_flags_parsed()  # grain's worker processes read absl flags.
      stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
    return iter(stream.batch(self.local_batch_size, drop_remainder=True, batch_fn=_stack))

  def __iter__(self):
    return self

  def next_local(self) -> dict[str, np.ndarray]:
    """This process's rows of the next batch, numpy [B / num_processes, ...]."""
    batch = next(self._local)
    self._batches += 1
    return batch

  def __next__(self) -> dict[str, jax.Array]:
    return to_global(self.next_local(), self.sharding, self.batch_size)

  def get_state(self) -> dict[str, Any]:
    return {'batches': self._batches}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Goes on after `state['batches']` global batches. A position written
    before positions counted batches ({'next_index': rows of this process})
    is read as one of a job with as many processes as this one."""
    if 'batches' in state:
      batches = int(state['batches'])
    elif set(state) == {'next_index'}:
      batches = int(state['next_index']) // self.local_batch_size
    else:
      raise ValueError(f'Unknown data position {dict(state)!r}: expected {{"batches": N}}.')
    self._batches = batches
    self._local = self._stream(batches)


def prefetch_to_devices(
  iterator: GlobalBatchIterator, size: int = 2
) -> Iterator[tuple[dict[str, jax.Array], dict[str, Any]]]:
  """`(batch, position)` pairs of `iterator`, `size` batches ahead.

  Each batch is already on its way to the devices (host work and transfer
  overlap the steps still running) when the loop takes it; `position` is the
  iterator state right after that batch, so a checkpoint of the step that
  used it resumes at the next batch, whatever was fetched ahead.
  """
  queue: collections.deque = collections.deque()

  def fetch():
    batch = next(iterator)
    queue.append((batch, iterator.get_state()))

  for _ in range(size):
    fetch()
  while True:
    yield queue.popleft()
    fetch()


def make_train_iterator(
  sources: Sequence[str | Source],
  weights: Sequence[float] | None = None,
  *,
  patch_size: int,
  batch_size: int,
  seed: int = 0,
  mesh: jax.sharding.Mesh | None = None,
  axis: str = DATA_AXIS,
  blur_prob: float = 0.5,
  flips: bool = True,
  num_threads: int = 2,
  worker_count: int = 0,
) -> GlobalBatchIterator:
  """Global training batches from a weighted mixture of data specs.

  Args:
    sources: data specs as for `specs.open_source` (opened with split
      'train'; `synthetic` makes patch-sized images) or opened `Source`s.
    weights: mixture weights (default uniform), one per source.
    patch_size: side P of the square training crops.
    batch_size: global batch size B (divisible by the data-axis size and by the
      number of processes).
    seed: fixes shuffles, mixture order, crops and flips.
    mesh: device mesh with axis `axis` (default: all devices on 'data').
    blur_prob: probability of centring a crop on a blurred pixel.
    flips: random horizontal and vertical flips.
    num_threads: reader threads per process.
    worker_count: > 0 reads in that many worker processes instead.
  """
  dataset = train_dataset(
    sources, weights, patch_size=patch_size, seed=seed, blur_prob=blur_prob, flips=flips
  )
  return GlobalBatchIterator(
    dataset,
    batch_size=batch_size,
    sharding=data_sharding(mesh, axis),
    num_threads=num_threads,
    worker_count=worker_count,
  )


def make_train_iterator_from_config(
  config, mesh: jax.sharding.Mesh | None = None
) -> GlobalBatchIterator:
  """`make_train_iterator` from a ConfigDict.

  Reads `config.batch_size`, `config.patch_size`, `config.get('seed', 0)` and
  `config.data` with `sources` (specs), optional `weights`, `blur_prob`,
  `flips`, `num_threads`, `worker_count`.
  """
  data = config.data

  def get(key: str, default: Any) -> Any:
    return data.get(key, default) if hasattr(data, 'get') else getattr(data, key, default)

  sources = get('sources', None)
  if isinstance(sources, str):
    sources = [sources]
  return make_train_iterator(
    list(sources),
    get('weights', None),
    patch_size=int(config.patch_size),
    batch_size=int(config.batch_size),
    seed=int(config.get('seed', 0)),
    mesh=mesh,
    blur_prob=float(get('blur_prob', 0.5)),
    flips=bool(get('flips', True)),
    num_threads=int(get('num_threads', 2)),
    worker_count=int(get('worker_count', 0)),
  )
