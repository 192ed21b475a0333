"""Runs several entry points of the project, each as `python ENTRY ARGS...`
would, in one interpreter: the heavy libraries are imported once, then each
command runs in a forked child as `__main__`, with its own argv, stdout and
stderr. Prints one JSON line per command: its returncode, stdout and stderr.

    python tests/entry_points.py '[["train.py", "--help"], ["-m", "lmdvit_jax.deblur", "--help"]]'

Not a test module: the tests run it through `helpers.run_commands`
(tests/test_cli.py without PYTHONPATH, so that what is imported is the
installed project). No JAX backend is started before the fork (a child may
start its own).
"""

import json
import os
from pathlib import Path
import runpy
import sys
import tempfile

REPO = Path(__file__).resolve().parents[1]
# What every command imports first; the children find them loaded.
PRELOAD = ('numpy', 'jax', 'jax.numpy', 'flax.linen', 'optax', 'orbax.checkpoint', 'absl.app')


def _child(command: list[str], out_fd: int, err_fd: int) -> None:
  """Runs `command` (`['train.py', ...]` or `['-m', 'pkg.mod', ...]`) as
  `__main__`; never returns."""
  os.dup2(out_fd, 1)
  os.dup2(err_fd, 2)
  code = 0
  try:
    sys.path.insert(0, str(REPO))  # as `python -m` (cwd) and `python script.py` (its folder) do
    if command[0] == '-m':
      sys.argv = [command[1], *command[2:]]  # run_module sets argv[0] to the module's file
      runpy.run_module(command[1], run_name='__main__', alter_sys=True)
    else:
      sys.argv = [str(REPO / command[0]), *command[1:]]
      runpy.run_path(str(REPO / command[0]), run_name='__main__')
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
  except BaseException:  # reported as Python would report it
    import traceback

    traceback.print_exc()
    code = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(command: list[str]) -> dict:
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _child(command, out.fileno(), err.fileno())
    _, status = os.waitpid(pid, 0)
    texts = []
    for f in (out, err):
      f.seek(0)
      texts.append(f.read().decode(errors='replace'))
  return {
    'command': command,
    'returncode': os.waitstatus_to_exitcode(status),
    'stdout': texts[0],
    'stderr': texts[1],
  }


def main() -> None:
  import importlib

  from lmdvit_jax import host_memory

  # Every command restarts itself once with huge pages on (cli.run); done here,
  # the children find it done.
  host_memory.restart_with_huge_pages()
  for name in PRELOAD:
    importlib.import_module(name)
  from jax._src import xla_bridge

  assert not xla_bridge._backends, 'a JAX backend started before the fork'
  for command in json.loads(sys.argv[1]):
    print(json.dumps(run(command)), flush=True)


if __name__ == '__main__':
  main()
