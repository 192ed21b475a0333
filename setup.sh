#!/usr/bin/env bash
# Creates ./.venv with Python 3.12, installs requirements.txt and the project (editable).
# Idempotent: a second run with unchanged requirements does nothing.
set -euo pipefail
cd "$(dirname "$0")"
py=$(bash .ci/find_python)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  rm -rf .venv
  "$py" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  echo "$want" > "$stamp"
fi
# The project itself, editable: `lmdvit_jax` and `configs` import from anywhere
# (benchmarks/, other folders). Pinned dependencies come from requirements.txt.
if ! .venv/bin/python -c 'import lmdvit_jax, configs' 2>/dev/null || [ ! -f .venv/.editable ]; then
  # setuptools warns about editable installs at length; show its output only on failure.
  if ! .venv/bin/python -m pip install --quiet --no-deps -e . > .venv/editable.log 2>&1; then
    cat .venv/editable.log >&2
    exit 1
  fi
  touch .venv/.editable
fi
