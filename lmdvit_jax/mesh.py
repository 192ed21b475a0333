"""Devices: joining the other processes of a multi-host job, and the device
mesh, one axis, `data`, over which batches are split."""

from __future__ import annotations

from collections.abc import Sequence
import os

from absl import logging
import jax

DATA_AXIS = 'data'


def make_mesh(
  devices: Sequence[jax.Device] | None = None, axis: str = DATA_AXIS
) -> jax.sharding.Mesh:
  """A 1-D mesh with axis `axis` over `devices` (default: all devices).

  The axis is of type Auto (shardings given at jit boundaries, propagated by
  the compiler inside), not Explicit (sharding in the types), so the model
  code needs no sharding annotations.
  """
  auto = (jax.sharding.AxisType.Auto,)
  if devices is None:
    return jax.make_mesh((jax.device_count(),), (axis,), axis_types=auto)
  return jax.make_mesh((len(devices),), (axis,), axis_types=auto, devices=devices)


def detect_cluster() -> str | None:
  """Names the multi-process job this process belongs to, or None.

  The environments are those `jax.distributed.initialize()` configures itself
  from: `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`),
  then JAX's own cluster detectors (Cloud TPU pod slices on GCE and GKE,
  SLURM, Open MPI, Kubernetes), each counted only with more than one process.
  """
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'coordinator address'
  try:
    # JAX registers a detector per environment here; not public API, hence the fallback.
    from jax._src.clusters import ClusterEnv

    detectors = [c for c in ClusterEnv._cluster_types if not c.opt_in_only_method]
  except (ImportError, AttributeError):
    detectors = []
  for cluster in detectors:
    try:
      if cluster.is_env_present() and cluster.get_process_count() > 1:
        return cluster.name or cluster.__name__
    except Exception as e:
      # A detector that cannot read its environment (e.g. no metadata server)
      # means that environment is not this one.
      logging.info('cluster detector %s failed: %s', cluster.__name__, e)
  if not detectors:
    for name, key in (('slurm', 'SLURM_NTASKS'), ('ompi', 'OMPI_COMM_WORLD_SIZE')):
      if int(env.get(key, '1') or 1) > 1:
        return name
  return None


def maybe_initialize_distributed(force: bool | None = None) -> bool:
  """Calls `jax.distributed.initialize()` for multi-process runs.

  Args:
    force: True always initialises, False never; None (default) initialises
      when `detect_cluster` finds a multi-process job.

  Returns:
    Whether it initialised.
  """
  if force is None:
    cluster = detect_cluster()
    force = cluster is not None
    if force:
      logging.info('multi-process job detected (%s): joining it', cluster)
  if force:
    env = os.environ
    count, pid = env.get('JAX_NUM_PROCESSES'), env.get('JAX_PROCESS_ID')
    jax.distributed.initialize(
      num_processes=int(count) if count else None, process_id=int(pid) if pid else None
    )
  return bool(force)
