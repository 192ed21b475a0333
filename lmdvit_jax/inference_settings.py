"""How a checkpoint runs: the one type inference options travel in.

`InferenceSettings` is built once, from the command line (`cli.inference_settings`)
or in code, and taken by `inference.Deblurrer`, `evaluation.evaluate`,
`deblur.run` and `export`. A field left None keeps what the checkpoint records
(its model.json for the model's fields, its inference.json for
`self_ensemble`), else the default. Every field is checked where it is set.

    settings = InferenceSettings(capacity=0.25, self_ensemble=8, tile=1024)
    deblurrer = Deblurrer.from_checkpoint('ckpt/lmdvit', settings=settings)
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

from lmdvit_jax.ensemble import SELF_ENSEMBLES
from lmdvit_jax.models import LMDViT, pruning
from lmdvit_jax.models.lmdvit import COMPUTE_DTYPES, MATMUL_PRECISIONS

# What a checkpoint's inference.json may record (the rest is model.json's).
RECORDED = ('self_ensemble',)


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  """Attributes:
  capacity: `'exact'`, `'masked'` or a fixed budget in (0, 1] (text or
    number; `pruning.parse_capacity`); None: the model's.
  keep_threshold: the decision threshold in [0, 1); None: the model's.
  dtype: compute dtype, 'float32' or 'bfloat16'; None: the model's.
  self_ensemble: passes per image, one of `SELF_ENSEMBLES`; None: the
    checkpoint's inference.json, else 1.
  matmul_precision: of float32 matmuls, one of `MATMUL_PRECISIONS`.
  tile: None: tiles only for canvases that need more than `max_memory`;
    0: always whole; N: square tiles of N pixels (a multiple of the grid).
  tile_overlap: pixels neighbouring tiles share (default one grid cell).
  max_memory: bytes one compiled call may use (default
    `programs.default_max_memory`).
  """

  capacity: str | float | None = None
  keep_threshold: float | None = None
  dtype: str | None = None
  self_ensemble: int | None = None
  matmul_precision: str = 'default'
  tile: int | None = None
  tile_overlap: int | None = None
  max_memory: int | None = None

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    if self.capacity is not None:
      set_('capacity', pruning.parse_capacity(self.capacity))
    if self.keep_threshold is not None:
      set_('keep_threshold', float(self.keep_threshold))
      if not 0 <= self.keep_threshold < 1:
        raise ValueError(f'keep_threshold must be in [0, 1), got {self.keep_threshold}')
    if self.dtype is not None and self.dtype not in COMPUTE_DTYPES:
      raise ValueError(f'dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.dtype!r}')
    if self.self_ensemble is not None:
      if str(self.self_ensemble) not in {str(n) for n in SELF_ENSEMBLES}:
        raise ValueError(
          f'self_ensemble must be one of {SELF_ENSEMBLES}, got {self.self_ensemble!r}'
        )
      set_('self_ensemble', int(self.self_ensemble))
    if self.matmul_precision not in MATMUL_PRECISIONS:
      raise ValueError(
        f'matmul_precision must be one of {MATMUL_PRECISIONS}, got {self.matmul_precision!r}'
      )
    if self.max_memory is not None and not self.max_memory > 0:
      raise ValueError(f'max_memory must be positive, got {self.max_memory}')

  def replace(self, **changes: Any) -> InferenceSettings:
    return dataclasses.replace(self, **changes)

  @property
  def passes(self) -> int:
    """Passes per image: `self_ensemble`, 1 when unset."""
    return self.self_ensemble or 1

  def with_recorded(self, recorded: Mapping[str, Any]) -> InferenceSettings:
    """These settings, the unset ones filled from a checkpoint's inference.json
    (`checkpointing.read_inference_settings` checks its keys)."""
    return self.replace(**{k: v for k, v in recorded.items() if getattr(self, k) is None})

  def recorded(self) -> dict[str, Any]:
    """What a checkpoint's inference.json keeps of these settings."""
    return {k: getattr(self, k) for k in RECORDED if getattr(self, k) is not None}

  def model(self, model: LMDViT) -> LMDViT:
    """`model` with the capacity, keep threshold and dtype these settings set."""
    changes: dict[str, Any] = {}
    if self.capacity is not None:
      changes['capacity'] = self.capacity
    if self.keep_threshold is not None:
      changes['keep_threshold'] = self.keep_threshold
    if self.dtype is not None:
      changes['dtype'] = COMPUTE_DTYPES[self.dtype]
    return model.clone(**changes) if changes else model
