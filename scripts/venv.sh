#!/usr/bin/env bash
# Creates (or updates) the project's Python virtualenv and prints its path:
# msgpack, cloudpickle, pytest, dask[array], and the package from python/
# in editable mode once python/pyproject.toml exists.
#   VENV=DIR (default: .venv at the repository root), PYTHON=python3
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "venv: creating $VENV with $("$PYTHON" --version 2>&1)" >&2
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
if ! "$VENV/bin/python" -c 'import msgpack, cloudpickle, pytest, dask.array' 2>/dev/null; then
  echo "venv: installing msgpack, cloudpickle, pytest, dask[array]" >&2
  "${PIP[@]}" install msgpack cloudpickle pytest "dask[array]"
fi
if [[ -f "$ROOT/python/pyproject.toml" ]] \
  && ! "$VENV/bin/python" -m pip show actord >/dev/null 2>&1; then
  echo "venv: installing python/ in editable mode" >&2
  "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT/python" \
    || "${PIP[@]}" install --no-deps -e "$ROOT/python"
fi
echo "$VENV"
