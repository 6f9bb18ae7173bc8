#!/usr/bin/env bash
# Runs one Python workload (noop.py or darts.py, ported from peers/dask) on a
# loopback actord cluster — scheduler with its journal, a nanny with K workers
# × T threads whose executors run the project's venv — and prints its JSON line.
#
#   bench/python/run.sh [--workers K] [--threads T] WORKLOAD [workload flags...]
#   bench/python/run.sh noop --n 10000 --variant map
#   bench/python/run.sh darts --inputs 100 --scale 1.0
#
# Env: ACTORD_BIN (default target/release/actord, built if missing).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
K=2 T=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) K="$2"; shift 2 ;;
    --threads) T="$2"; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { sed -n '2,10p' "$0" >&2; exit 2; }
WL="$1"; shift
case "$WL" in noop|darts) ;; *) echo "unknown workload '$WL' (noop|darts)" >&2; exit 2 ;; esac
BIN="${ACTORD_BIN:-$ROOT/target/release/actord}"
[[ -x "$BIN" ]] || (cd "$ROOT" && cargo build --release --locked >&2)
VENV="$("$ROOT/scripts/venv.sh")"
PY="$VENV/bin/python"
RUN_DIR="$(mktemp -d /tmp/actord-pybench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
SF="$RUN_DIR/scheduler.json"
"$BIN" scheduler --scheduler-file "$SF" --host 127.0.0.1 --port 0 --journal "$RUN_DIR/journal" \
  2>"$RUN_DIR/scheduler.log" & pids+=($!)
"$BIN" nanny --scheduler-file "$SF" --workers "$K" --threads "$T" --python "$PY" \
  2>"$RUN_DIR/nanny.log" & pids+=($!)
"$BIN" wait --scheduler-file "$SF" --workers "$K" --timeout 60 >/dev/null 2>&1
extra=()
[[ "$WL" == darts ]] && extra=(--out "$RUN_DIR/darts-result.json")
export BENCH_WORKERS="$K" BENCH_THREADS="$T"
(cd "$HERE" && "$PY" "$WL.py" --scheduler-file "$SF" --expect-workers "$K" "${extra[@]}" "$@" \
  2>>"$RUN_DIR/client.log") || { rc=$?; tail -25 "$RUN_DIR/client.log" >&2; exit $rc; }
