"""How every command of the project takes flags and reports errors.

Every script ends with `cli.run(main)`: absl flags (and ml_collections config
flags) are parsed, and a mistake of the user's, in a flag, a config override or
the data and checkpoints it points at, becomes one line on stderr, never a
traceback:

    PROG: error: MESSAGE

Exit codes: 0 success; 1 some inputs failed (named on stderr, the rest done);
2 nothing done: a bad flag, config, data spec, file or checkpoint; 130
interrupted by Ctrl-C (one line, no traceback).
"""

from __future__ import annotations

import _thread
from collections.abc import Callable, Sequence
import functools
import logging as logging_lib
from pathlib import Path
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

from absl import app, flags, logging

from lmdvit_jax import errors, host_memory

if TYPE_CHECKING:
  from lmdvit_jax.inference_settings import InferenceSettings

EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it.
_HELP = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def error(message: str) -> None:
  """Prints `PROG: error: message` (one line) to stderr."""
  prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else 'lmdvit_jax'
  text = ' '.join(str(message).split())
  print(f'{prog}: error: {text}', file=sys.stderr)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
  """Prints `PROG: error: message` (one line) to stderr and exits with `code`."""
  error(message)
  sys.exit(code)


def _message(error: BaseException, argv: Sequence[str] = ()) -> str:
  """A one-line message; a config KeyError / AttributeError names the whole key
  as the command line spelled it (`--config.optim.lrr` -> 'optim.lrr')."""
  text = str(error.args[0]) if len(error.args) == 1 else str(error)
  if not isinstance(error, (KeyError, AttributeError)):
    return text
  text = text.replace('\\n', '\n').replace("\\'", "'").strip('\'"')
  key, _, hint = text.partition('\n')
  key = key.strip('\'" ')
  for arg in argv:
    name = arg.split('=')[0]
    if name.startswith('--') and '.' in name and name.split('.')[-1] == key:
      key = name[2:].split('.', 1)[1]
      break
  return f"unknown config key '{key}'" + (f' ({hint.strip()})' if hint.strip() else '')


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with bad flags and config overrides reported in one line."""
  try:
    return flags.FLAGS(list(argv))
  except SystemExit:
    # absl prints the help and exits 1; asking for help is not an error.
    if any(a.split('=')[0] in _HELP for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # --config.x=... overrides
    fail(_message(e, argv))


_UNITS = {'': 1, 'k': 2**10, 'm': 2**20, 'g': 2**30, 't': 2**40}


def parse_bytes(text: str) -> int:
  """'3G', '512M', '2.5GiB', '3e9' -> bytes (K, M, G, T are powers of 1024)."""
  match = re.fullmatch(r'\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*', str(text).lower())
  if not match:
    raise ValueError(f"expected a size such as '3G' or '512M', got {text!r}")
  value = float(match.group(1)) * _UNITS[match.group(2)]
  if value < 1:
    raise ValueError(f'a memory size must be positive, got {text!r}')
  return int(value)


def define_inference_flags(tiling: bool = True) -> None:
  """The flags of every command that runs a checkpoint (evaluate.py, deblur,
  export, the benchmarks that load one): one definition, read by
  `inference_settings`; `tiling=False` leaves out the tiling flags.

  The flags are the calling command's own: its `--help` lists them.
  """
  caller = sys._getframe(1).f_globals.get('__name__')
  own = sys.argv[0] if caller == '__main__' else str(caller)
  flags.DEFINE_string(
    'checkpoint', None, 'Checkpoint directory (convert or train.py).', module_name=own
  )
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: newest).', module_name=own)
  flags.DEFINE_string(
    'capacity',
    'exact',
    "'exact', 'masked' or a window fraction in (0, 1] (a fixed budget).",
    module_name=own,
  )
  flags.DEFINE_float(
    'keep_threshold', None, 'Override the keep threshold of the checkpoint.', module_name=own
  )
  flags.DEFINE_enum(
    'dtype',
    None,
    ['float32', 'bfloat16'],
    'Compute dtype (default: the checkpoint\'s model.json, else float32); params stay float32.',
    module_name=own,
  )
  flags.DEFINE_enum(
    'self_ensemble',
    None,
    ['1', '2', '4', '8'],
    'Passes per image, flipped and '
    "transposed, averaged (default: the checkpoint's inference.json, else 1).",
    module_name=own,
  )
  flags.DEFINE_enum(
    'matmul_precision',
    'default',
    ['default', 'high', 'highest'],
    'Float32 '
    "matmul precision: 'default' is the backend's (TF32-like on NVIDIA GPUs); "
    "'highest' computes in full float32 as PyTorch does.",
    module_name=own,
  )
  if not tiling:
    return
  flags.DEFINE_integer(
    'tile',
    None,
    'Tile side in pixels, a multiple of 16 x win_size; 0: '
    'always the whole image (default: tiles only for images that need more '
    'than --max_memory, as large as it allows).',
    module_name=own,
  )
  flags.DEFINE_integer(
    'tile_overlap',
    None,
    'Pixels shared by neighbouring tiles, a multiple of 16 x win_size (default: 16 x win_size).',
    module_name=own,
  )
  flags.DEFINE_string(
    'max_memory',
    None,
    "Memory one compiled call may use, e.g. '3G' or "
    "'800M' (default: 3G on a CPU, or a quarter of its memory if less; 80% of "
    "an accelerator's free memory).",
    module_name=own,
  )


def inference_settings() -> InferenceSettings:
  """The values of `define_inference_flags` but `checkpoint` and `step`: the
  settings `evaluation.evaluate`, `deblur.run` and `export` take."""
  # Imported here: the settings pull in the model; flag parsing and --help stay light.
  from lmdvit_jax.inference_settings import InferenceSettings

  fl = flags.FLAGS
  settings = InferenceSettings(
    capacity=fl.capacity,
    keep_threshold=fl.keep_threshold,
    dtype=fl.dtype,
    self_ensemble=fl.self_ensemble,
    matmul_precision=fl.matmul_precision,
  )
  if 'tile' in fl:
    settings = settings.replace(
      tile=fl.tile,
      tile_overlap=fl.tile_overlap,
      max_memory=None if fl.max_memory is None else parse_bytes(fl.max_memory),
    )
  return settings


def _ours(record: logging_lib.LogRecord) -> bool:
  """Whether a log record is worth showing at INFO: a warning or worse, or
  logged by this project (not by an installed library: jax probing for a TPU,
  orbax describing every file it writes)."""
  path = record.pathname.replace('\\', '/')
  return (
    record.levelno >= logging_lib.WARNING
    or '/lmdvit_jax/' in path
    or not ('site-packages/' in path or 'dist-packages/' in path)
  )


def _config_file_error(error: OSError) -> str | None:
  """A one-line message for ml_collections' failure to load `--config`."""
  text = str(error)
  if 'Failed loading config file' not in text:
    return None
  return f'--config: {text.strip().splitlines()[-1].strip()}'


def _deliver_lost_interrupts(
  unraisable: sys.UnraisableHookArgs, previous: Callable[[sys.UnraisableHookArgs], object]
) -> None:
  """Raises a Ctrl-C again that Python swallowed: one that lands in a
  finalizer or a gc callback (JAX runs one at every collection) is printed
  as 'Exception ignored' and the command would carry on."""
  if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
    # Sent again from another thread, a moment later: by then this code has
    # returned (were it to land in a finalizer again, this hook runs again).
    threading.Timer(0.01, _thread.interrupt_main, (signal.SIGINT,)).start()
    return
  previous(unraisable)


def run(
  main: Callable[[list[str]], int | None], quiet: bool = False, huge_pages: bool = True
) -> None:
  """`absl.app.run(main)` with one-line errors (see the module docstring), in a
  process whose large allocations go on huge pages (`host_memory`).

  Libraries' INFO logs are left out unless `--verbosity` is given. `quiet`:
  log warnings and errors only (a command that prints results keeps them
  readable). `huge_pages=False`: no restart onto huge pages, for a command of
  a few short calls of small programs, where mapping 2 MiB pages costs more
  than it saves (docs/performance.md)."""
  if huge_pages:
    host_memory.restart_with_huge_pages()

  def guarded(argv: list[str]) -> int | None:
    if not flags.FLAGS['verbosity'].present:
      logging.get_absl_handler().addFilter(_ours)
      if quiet:
        logging.set_verbosity(logging.WARNING)
    # With --verbosity=1 or more, a user's error shows its traceback too.
    one_line = (flags.FLAGS['verbosity'].value or 0) < 1
    try:
      return main(argv)
    except app.UsageError as e:  # absl would print the whole --help first
      fail(str(e))
    except OSError as e:
      if (message := _config_file_error(e)) and one_line:
        fail(message)
      if isinstance(e, errors.USER_ERRORS) and one_line:
        fail(_message(e))
      raise
    except Exception as e:
      if isinstance(e, errors.USER_ERRORS) and one_line:
        fail(_message(e))
      raise

  previous_hook = sys.unraisablehook
  sys.unraisablehook = functools.partial(_deliver_lost_interrupts, previous=previous_hook)
  try:
    app.run(guarded, flags_parser=parse_flags)
  except KeyboardInterrupt:
    # Ctrl-C before a command installs its own handling (train.py's loop
    # checkpoints and exits 0): files are only ever renamed into place whole.
    fail('interrupted (Ctrl-C); nothing is left half-written', EXIT_INTERRUPTED)
  finally:
    sys.unraisablehook = previous_hook
