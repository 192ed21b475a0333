"""The device mesh: one axis, `data`, over which batches are split."""

from __future__ import annotations

from typing import Sequence

import jax

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None,
              axis: str = DATA_AXIS) -> jax.sharding.Mesh:
  """A 1-D mesh with axis `axis` over `devices` (default: all devices).

  The axis is of type Auto (shardings given at jit boundaries, propagated by
  the compiler inside), not Explicit (sharding in the types), so the model
  code needs no sharding annotations.
  """
  auto = (jax.sharding.AxisType.Auto,)
  if devices is None:
    return jax.make_mesh((jax.device_count(),), (axis,), axis_types=auto)
  return jax.make_mesh((len(devices),), (axis,), axis_types=auto, devices=devices)
