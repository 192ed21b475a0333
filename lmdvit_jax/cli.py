"""How every command of the project takes flags and reports errors.

Every script ends with `cli.run(main)`: absl flags (and ml_collections config
flags) are parsed, and a mistake of the user's, in a flag, a config override or
the data and checkpoints it points at, becomes one line on stderr, never a
traceback:

    PROG: error: MESSAGE

Exit codes: 0 success; 1 some inputs failed (named on stderr, the rest done);
2 nothing done: a bad flag, config, data spec, file or checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from absl import app, flags, logging

from lmdvit_jax import host_memory

EXIT_PARTIAL = 1
EXIT_USAGE = 2
_HELP = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
  """Prints `PROG: error: message` (one line) to stderr and exits with `code`."""
  prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else 'lmdvit_jax'
  text = ' '.join(str(message).split())
  print(f'{prog}: error: {text}', file=sys.stderr)
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


def user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions that mean a bad input, not a bug: reported in one line, exit 2."""
  # Imported here: the data and checkpoint modules are heavy, flags are not.
  from lmdvit_jax.checkpointing import CheckpointError  # pylint: disable=g-import-not-at-top
  from lmdvit_jax.data import DataError  # pylint: disable=g-import-not-at-top
  return (ValueError, TypeError, ImportError, FileNotFoundError, NotADirectoryError,
          FileExistsError, DataError, CheckpointError)


def run(main: Callable[[list[str]], int | None], quiet: bool = False) -> None:
  """`absl.app.run(main)` with one-line errors (see the module docstring), in a
  process whose large allocations go on huge pages (`host_memory`).

  `quiet`: log warnings and errors only, unless `--verbosity` is given (loading
  a checkpoint logs a lot at INFO; a command that prints results keeps them
  readable)."""
  host_memory.restart_with_huge_pages()

  def guarded(argv: list[str]) -> int | None:
    if quiet and not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except app.UsageError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if isinstance(e, user_errors()) and flags.FLAGS['verbosity'].value < 1:
        fail(_message(e))
      raise

  app.run(guarded, flags_parser=parse_flags)
