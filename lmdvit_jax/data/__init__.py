"""Data: synthetic local blur, dataset readers, TFDS builders, training pipeline.

Modules: `examples` (records and the `Source` interface), `cache` (decoded frames),
`readers` (one reader per folder layout), `synthetic`, `tfds_builders` (the
TFDS builders `reloblur`, `gopro`, `synthetic_local_blur`, registered on
import, and `TfdsSource`), `specs` (data spec strings -> sources), `crops`,
`pipeline` (grain + jax; import it explicitly), `build` (command line).
"""

from lmdvit_jax.data import tfds_builders  # Registers the TFDS builders.
from lmdvit_jax.data.examples import DataError
from lmdvit_jax.data.specs import open_source

__all__ = ['DataError', 'open_source', 'tfds_builders']
