"""The compiled forward programs every `Deblurrer` of a process shares, and
what XLA says of them: FLOPs, and the memory one call holds (from which the
memory budget and tiling decide).

One XLA executable is compiled per (model, canvas shape, passes, matmul
precision) and kept for the life of the process, so images of equal padded
size compile once; params are arguments of the executable, never baked in.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp

from lmdvit_jax import ensemble
from lmdvit_jax.models import LMDViT

_EXECUTABLES: dict[tuple[LMDViT, tuple[int, ...], int, str], jax.stages.Compiled] = {}
_LOCK = threading.Lock()


def compiled_forward(
  model: LMDViT,
  params: Any,
  shape: tuple[int, int, int, int],
  passes: int = 1,
  precision: str = 'default',
) -> jax.stages.Compiled:
  """The executable of `ensemble.forward` for float32 canvases of `shape` [B, Hp, Wp, 3].

  Cached per (model attributes, shape, passes, precision) for the process;
  `params` only supply their shapes and dtypes.
  """
  key = (model, tuple(int(s) for s in shape), int(passes), precision)
  with _LOCK:
    if key not in _EXECUTABLES:
      x = jax.ShapeDtypeStruct(key[1], jnp.float32)
      p = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
      fn = jax.jit(ensemble.forward, static_argnums=(0, 3, 4))
      _EXECUTABLES[key] = fn.lower(model, p, x, passes, precision).compile()
    return _EXECUTABLES[key]


def compiled_flops(executable: jax.stages.Compiled) -> float:
  """FLOPs of one call from XLA's cost analysis (NaN if the backend has none).

  XLA counts a while loop's body once, whatever its trip count: for a model
  with `capacity='exact'` this is one chunk per pruned block, not the windows
  the call runs (`Deblurrer` reports NaN there). A fixed float capacity counts
  exactly that budget.
  """
  cost = executable.cost_analysis()
  if isinstance(cost, Sequence):  # Older jax: one dict per device program.
    cost = cost[0] if cost else {}
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def compiled_memory(executable: jax.stages.Compiled) -> int | None:
  """Bytes one call of `executable` holds at once: arguments (params included),
  outputs and XLA's temporaries; None where the backend does not say."""
  try:
    m = executable.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if m is None:
    return None
  return int(
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )


# The CPU default of `max_memory`: with it a 24-megapixel photo deblurs in
# under 6 GB of resident memory (docs/tiling.md).
HOST_MEMORY_BUDGET = 3 * 2**30


def default_max_memory(device: jax.Device | None = None) -> int:
  """The memory one compiled call may use by default: on a CPU, 3 GiB or a
  quarter of the machine's memory if that is less; on an accelerator, 80% of
  its free memory."""
  device = device or jax.devices()[0]
  if device.platform == 'cpu':
    try:
      total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
      return HOST_MEMORY_BUDGET
    return min(HOST_MEMORY_BUDGET, total // 4)
  stats = device.memory_stats() or {}
  if 'bytes_limit' not in stats:
    return HOST_MEMORY_BUDGET
  return int(0.8 * (stats['bytes_limit'] - stats.get('bytes_in_use', 0)))


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` is a device or host allocation failure."""
  return isinstance(error, MemoryError) or (
    isinstance(error, jax.errors.JaxRuntimeError) and 'RESOURCE_EXHAUSTED' in str(error)
  )
