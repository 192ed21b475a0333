"""The errors a user's input can cause, in one module every layer imports.

`cli.run` reports any of `USER_ERRORS` as one line, `PROG: error: ...`; a
module that raises them imports them from here, never from `cli` (which sits
above every other module).
"""

from __future__ import annotations


class DataError(ValueError):
  """A dataset on disk is not what its reader expects (pairs, sizes, files)."""


class CheckpointError(RuntimeError):
  """No intact checkpoint could be read from a directory, or one would be overwritten."""


class OutOfMemoryError(RuntimeError):
  """A computation asked for more memory than the device has; the message says
  what to make smaller."""


class WorkdirInUseError(RuntimeError):
  """Another run holds the workdir's lock; the message names it."""


# Exceptions that mean a bad input or setting, not a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
  ValueError,
  TypeError,
  ImportError,
  FileNotFoundError,
  NotADirectoryError,
  IsADirectoryError,
  FileExistsError,
  PermissionError,
  DataError,
  CheckpointError,
  OutOfMemoryError,
  WorkdirInUseError,
)
