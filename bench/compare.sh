#!/usr/bin/env bash
# Runs one workload on actord and on Dask (peers/dask, whose setup.sh builds
# its venv) on this machine, one after the other, and prints both JSON lines
# and the ratio. Figures are only comparable within one run of this script.
#
#   bench/compare.sh [map|chain|tree] [N]      (default: map 10000)
#
# Env: PEERS (default: ../shared/peers beside this checkout).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PEERS="${PEERS:-$(dirname "$ROOT")/shared/peers}"
VARIANT="${1:-map}"
N="${2:-10000}"
case "$VARIANT" in map|chain|tree) ;; *) echo "usage: $0 [map|chain|tree] [N]" >&2; exit 2 ;; esac
[[ "$N" =~ ^[0-9]+$ ]] || { echo "N must be a number" >&2; exit 2; }
[[ -x "$PEERS/dask/run.sh" ]] || { echo "no Dask harness at $PEERS/dask (set PEERS)" >&2; exit 2; }

"$PEERS/dask/setup.sh" >&2
actord=$(cd "$ROOT" && cargo bench --bench cluster -- noop --variant "$VARIANT" --n "$N" 2>/dev/null | tail -1)
dask=$(RESULTS="" "$PEERS/dask/run.sh" --workers 2 --threads 1 noop --n "$N" --variant "$VARIANT" 2>/dev/null | tail -1)
echo "$actord"
echo "$dask"
python3 - "$actord" "$dask" <<'PY'
import json, sys
a, d = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{a['variant']} n={a['n']}: actord {a['tasks_per_s']:,.0f} tasks/s, "
      f"dask {d['tasks_per_s']:,.0f} tasks/s, ratio {a['tasks_per_s'] / d['tasks_per_s']:,.0f}x")
PY
