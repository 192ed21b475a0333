"""Scripts restart once with glibc's huge-page tunable, where it helps."""

import subprocess
import sys

import pytest

from lmdvit_jax import host_memory
from tests.helpers import REPO, subprocess_env

GLIBC = (2, 36)


@pytest.mark.parametrize(
  'environ, thp, glibc, expected',
  [
    ({}, 'madvise', GLIBC, True),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, 'madvise', GLIBC, True),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'madvise', GLIBC, False),  # the user's choice
    ({'LMDVIT_HUGE_PAGES': '0'}, 'madvise', GLIBC, False),
    ({}, 'always', GLIBC, False),  # huge pages already
    ({}, 'never', GLIBC, False),
    ({}, None, GLIBC, False),  # no such kernel setting (not Linux)
    ({}, 'madvise', (2, 31), False),  # glibc without the tunable
    ({}, 'madvise', None, False),  # musl, macOS
  ],
)
def test_restart_only_where_the_tunable_is_missing_and_would_act(environ, thp, glibc, expected):
  assert host_memory.needs_restart(environ, thp, glibc) is expected


def test_the_tunable_joins_those_already_set():
  env = host_memory.with_tunable({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'X': '1'})
  assert env == {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1', 'X': '1'}
  assert host_memory.with_tunable({})['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'


@pytest.mark.parametrize(
  'text, mode',
  [
    ('always [madvise] never\n', 'madvise'),
    ('[always] madvise never\n', 'always'),
    ('always madvise [never]\n', 'never'),
    ('garbled\n', None),
  ],
)
def test_thp_mode_is_the_bracketed_setting(tmp_path, text, mode):
  setting = tmp_path / 'enabled'
  setting.write_text(text)
  assert host_memory.thp_mode(setting) == mode
  assert host_memory.thp_mode(tmp_path / 'missing') is None


SCRIPT = '''
import os, sys
from lmdvit_jax import cli
def main(argv):
  print(os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), ' '.join(argv[1:]))
cli.run(main, huge_pages=sys.argv.pop(1) == 'on')
'''


@pytest.mark.parametrize('opt_out, command', [(False, 'on'), (True, 'on'), (False, 'off')])
def test_a_script_runs_once_with_its_arguments_and_the_tunable_where_it_helps(opt_out, command):
  """`command`: whether the script asks for huge pages (`cli.run(huge_pages=...)`)."""
  env = subprocess_env(**{host_memory.OPT_OUT: '0' if opt_out else '1'})
  env.pop('GLIBC_TUNABLES', None)
  proc = subprocess.Popen(
    [sys.executable, '-c', SCRIPT, command, 'a', 'b c'],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  lines = out.splitlines()
  assert len(lines) == 1, out  # main ran once
  pid, tunables, args = lines[0].split(' ', 2)
  assert int(pid) == proc.pid  # re-executed in place, not a child process
  assert args == 'a b c'
  expected = command == 'on' and host_memory.needs_restart(
    env, host_memory.thp_mode(), host_memory.glibc_version()
  )
  assert (tunables == host_memory.TUNABLE) is expected
  assert expected is (
    command == 'on'
    and not opt_out
    and host_memory.thp_mode() == 'madvise'
    and (host_memory.glibc_version() or (0,)) >= host_memory.MIN_GLIBC
  )
