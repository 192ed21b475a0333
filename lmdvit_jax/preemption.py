"""Stopping a training run cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C).

    stop = preemption.StopRequest()
    for step in ...:
      state = train_step(state, batch)
      if stop.reached(step):      # every process agrees on this step
        save(state, step)
        break
    stop.close()

One process: the first SIGTERM or SIGINT sets a flag that `reached` reads
after the step in flight (nothing waits on the device for it); a second one
stops the process at once.

Several processes (`jax.distributed.initialize`): JAX's preemption service
owns SIGTERM. A notice on any process reaches all of them, and
`reached(step)` turns true on every process at the same step (the largest
step any of them had reached, plus one), so they save one checkpoint
together. A SIGINT is passed on to the service as a SIGTERM of this process.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

from absl import logging
import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _multi_process() -> bool:
  return jax.process_count() > 1


class StopRequest:
  """Signal handlers that turn a stop signal into a clean end of the run."""

  def __init__(self):
    self.signal: str | None = None
    self._previous = {}
    mine = (signal.SIGINT,) if _multi_process() else SIGNALS
    for signum in mine:
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self.signal is not None:  # the second one: stop now
      self.close()
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signal = signal.Signals(signum).name
    logging.warning(
      '%s received: finishing the step in flight, then saving a checkpoint '
      '(send it again to stop at once)',
      self.signal,
    )
    if _multi_process() and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service takes it from here

  def reached(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop (every process gets the same answer).

    Call it at every step on every process: several processes agree through
    JAX's preemption service, which counts the steps it is told about.
    """
    if _multi_process():
      stop = multihost_utils.reached_preemption_sync_point(step)
      if stop and self.signal is None:
        self.signal = 'SIGTERM'
      return stop
    return self.signal is not None

  def close(self) -> None:
    """Puts the previous handlers back."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
