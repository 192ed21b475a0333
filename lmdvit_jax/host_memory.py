"""Host memory on Linux: XLA:CPU's large temporaries on transparent huge pages.

XLA:CPU allocates a step's temporaries (gigabytes for a training step) with
`malloc`. glibc serves blocks that large with a fresh `mmap` and unmaps them
when freed, so every step the kernel maps and zeroes them again in 4 KiB pages:
3.0 million minor page faults and about a quarter of the `lmdvit_small` train
step on a 2-core CPU (`benchmarks/train_step.py`, page-fault column). glibc's
`glibc.malloc.hugetlb=1` tunable marks those blocks for transparent huge pages
(2 MiB), which takes the faults to about ten thousand.

Tunables are read once, when the process starts, so `restart_with_huge_pages`
re-executes the command with the tunable set (same pid, arguments and
environment otherwise). `cli.run` calls it before parsing flags, so the
project's scripts start this way (not `demo.py`: for a few calls of small
programs the 2 MiB pages zeroed at start-up cost more than they save);
`LMDVIT_HUGE_PAGES=0` turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping
import os
from pathlib import Path
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'LMDVIT_HUGE_PAGES'
# glibc.malloc.hugetlb first shipped in glibc 2.35.
MIN_GLIBC = (2, 35)
_THP_SETTING = Path('/sys/kernel/mm/transparent_hugepage/enabled')


def thp_mode(setting: Path = _THP_SETTING) -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), None if unknown."""
  try:
    text = setting.read_text()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1 : end] if 0 <= start < end else None


def glibc_version() -> tuple[int, ...] | None:
  """This process's glibc version, None when the C library is not glibc."""
  lib, version = platform.libc_ver()
  if lib != 'glibc' or not version:
    return None
  try:
    return tuple(int(part) for part in version.split('.')[:2])
  except ValueError:
    return None


def needs_restart(
  environ: Mapping[str, str], thp: str | None, glibc: tuple[int, ...] | None
) -> bool:
  """Whether a restart with `TUNABLE` would put large allocations on huge pages.

  Only under the kernel's 'madvise' mode: with 'always' they are on huge pages
  already, with 'never' the tunable does nothing.
  """
  return (
    environ.get(OPT_OUT, '1') != '0'
    and thp == 'madvise'
    and glibc is not None
    and glibc >= MIN_GLIBC
    and 'glibc.malloc.hugetlb' not in environ.get('GLIBC_TUNABLES', '')
  )


def with_tunable(environ: Mapping[str, str]) -> dict[str, str]:
  """`environ` with `TUNABLE` added to the tunables already there."""
  env = dict(environ)
  env['GLIBC_TUNABLES'] = ':'.join(t for t in (env.get('GLIBC_TUNABLES', ''), TUNABLE) if t)
  return env


def restart_with_huge_pages() -> None:
  """Re-executes this process's command with `TUNABLE` set, when that helps.

  Returns without doing anything when it would not (see `needs_restart`), and
  the second time, in the restarted process.
  """
  if not needs_restart(os.environ, thp_mode(), glibc_version()):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv keeps `-m module` and interpreter options, which argv loses.
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_tunable(os.environ))
