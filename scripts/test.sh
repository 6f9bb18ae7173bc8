#!/usr/bin/env bash
# The whole test suite, Rust and Python: `cargo test --locked`, then pytest on
# python/tests/ against the freshly built target/debug/actord, in the
# project's venv (scripts/venv.sh creates it). Arguments go to pytest.
# The status page's tests need Chromium: scripts/chromium.sh installs it.
#   SKIP_CARGO=1 scripts/test.sh -k dask     only some Python tests
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Every scheduler a test starts serves its status page on a port of its own.
export ACTORD_DASHBOARD="${ACTORD_DASHBOARD:-127.0.0.1:0}"
VENV="$(scripts/venv.sh)"
# Exit 3: it cannot be installed here; the browser tests then say they skip.
scripts/chromium.sh >/dev/null || [[ $? == 3 ]]
if [[ -z "${SKIP_CARGO:-}" ]]; then
  cargo test --locked
else
  cargo build --locked
fi
export ACTORD_BIN="$ROOT/target/debug/actord"
cd "$ROOT/python"
"$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@" tests </dev/null
