#!/usr/bin/env bash
# Runs the benchmark suite on actord and on Dask (peers/dask, whose setup.sh
# builds its venv) on this machine, one after the other, and prints every JSON
# line and then a Markdown table of the ratios. Figures are only comparable
# within one run of this script.
#
#   bench/compare.sh                 the whole suite (about 5 minutes, Dask most of it)
#   bench/compare.sh map chain       only these rows
#   QUICK=1 bench/compare.sh         small sizes, a smoke run (about 1 minute)
#
# Rows: map (noop map), chain (noop chain), tree (noop tree), darts-small,
# darts (the tutorial's size); actord-only rows: cmd (/bin/true array),
# million (one 1M-task job), restart (1k, 100k and 1M-task journals); Python
# rows (bench/python: peers/dask's noop.py and darts.py on the Python client,
# py tasks in the workers' executors): py-map, py-chain, py-darts-small,
# py-darts (the tutorial's size).
#
# Env: PEERS (default: ../shared/peers beside this checkout), OUT (where the
# JSON lines go, default bench/results.jsonl; "" = nowhere).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PEERS="${PEERS:-$(dirname "$ROOT")/shared/peers}"
OUT="${OUT-$HERE/results.jsonl}"
ALL=(map chain tree darts-small darts cmd million restart py-map py-chain py-darts-small py-darts)
ROWS=("$@")
[[ ${#ROWS[@]} -gt 0 ]] || ROWS=("${ALL[@]}")
for r in "${ROWS[@]}"; do
  [[ " ${ALL[*]} " == *" $r "* ]] || { echo "unknown row $r (rows: ${ALL[*]})" >&2; exit 2; }
done
if [[ -n "${QUICK:-}" ]]; then
  MAP=(10000 2000) CHAIN=(1000 200) TREE=(1000 200) MILLION=100000 RESTART=(1000 10000) TUTORIAL=(100 0.05)
  PYMAP=2000 PYCHAIN=200
else
  # actord size, Dask size (Dask at the actord size would take minutes per row)
  MAP=(100000 10000) CHAIN=(10000 1000) TREE=(10000 1000) MILLION=1000000 RESTART=(1000 100000 1000000)
  TUTORIAL=(100 1.0)
  PYMAP=10000 PYCHAIN=1000
fi
[[ -x "$PEERS/dask/run.sh" ]] || { echo "no Dask harness at $PEERS/dask (set PEERS)" >&2; exit 2; }
"$PEERS/dask/setup.sh" >&2
(cd "$ROOT" && cargo build --release --benches --bins >&2)

LINES=$(mktemp)
trap 'rm -f "$LINES"' EXIT
actord() { # row, bench args...
  local row="$1"; shift
  echo "== actord $row: $*" >&2
  local line
  line=$(cd "$ROOT" && cargo bench -q --bench cluster -- "$@" | tail -1)
  echo "$row actord $line" >>"$LINES"
  echo "$line"
}
pyactord() { # row, bench/python/run.sh args...
  local row="$1"; shift
  echo "== actord-py $row: $*" >&2
  local line
  line=$("$HERE/python/run.sh" --workers 2 --threads 1 "$@" | tail -1)
  echo "$row actord $line" >>"$LINES"
  echo "$line"
}
dask() { # row, run.sh args...
  local row="$1"; shift
  echo "== dask $row: $*" >&2
  local line
  line=$(RESULTS="" "$PEERS/dask/run.sh" --workers 2 --threads 1 "$@" 2>/dev/null | tail -1)
  echo "$row dask $line" >>"$LINES"
  echo "$line"
}
for r in "${ROWS[@]}"; do
  case "$r" in
    map) actord map noop --n "${MAP[0]}"; dask map noop --n "${MAP[1]}" ;;
    chain) actord chain noop --variant chain --n "${CHAIN[0]}"; dask chain noop --variant chain --n "${CHAIN[1]}" ;;
    tree) actord tree noop --variant tree --n "${TREE[0]}"; dask tree noop --variant tree --n "${TREE[1]}" ;;
    darts-small)
      actord darts-small darts --inputs 20 --scale 0.01
      dask darts-small darts --inputs 20 --scale 0.01 --rng private --out /dev/null ;;
    darts)
      actord darts darts --inputs "${TUTORIAL[0]}" --scale "${TUTORIAL[1]}" --repeat 1
      dask darts darts --inputs "${TUTORIAL[0]}" --scale "${TUTORIAL[1]}" --rng private --out /dev/null ;;
    cmd) actord cmd cmd --n 10000 --repeat 1 ;;
    million) actord million million --n "$MILLION" ;;
    restart) for n in "${RESTART[@]}"; do actord restart restart --n "$n"; done ;;
    py-map) pyactord py-map noop --n "$PYMAP"; dask py-map noop --n "$PYMAP" ;;
    py-chain) pyactord py-chain noop --variant chain --n "$PYCHAIN"; dask py-chain noop --variant chain --n "$PYCHAIN" ;;
    py-darts-small)
      pyactord py-darts-small darts --inputs 20 --scale 0.01
      dask py-darts-small darts --inputs 20 --scale 0.01 --rng private --out /dev/null ;;
    py-darts)
      pyactord py-darts darts --inputs "${TUTORIAL[0]}" --scale "${TUTORIAL[1]}"
      dask py-darts darts --inputs "${TUTORIAL[0]}" --scale "${TUTORIAL[1]}" --out /dev/null ;;
  esac
done
[[ -z "$OUT" ]] || sed 's/^[^ ]* [^ ]* //' "$LINES" >>"$OUT"

python3 - "$LINES" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    row, system, doc = line.split(" ", 2)
    try:
        rows.setdefault(row, {}).setdefault(system, []).append(json.loads(doc))
    except ValueError:
        print(f"{row} {system}: no result ({doc.strip()[:200]})")
def speed(d):
    if d.get("variant") == "chain":
        return f"{d['wall_s'] / d['n'] * 1e6:,.1f} µs/link", d['n'] / d['wall_s']
    return f"{d['tasks_per_s']:,.0f} tasks/s", d['tasks_per_s']
print()
print("| row | actord | Dask | ratio | notes |")
print("|---|---|---|---|---|")
for row, by in rows.items():
    for a in by.get("actord", []):
        d = (by.get("dask") or [None])[0]
        if a["workload"] == "restart":
            print(f"| restart, {a['finished_tasks_in_journal']:,} tasks in the journal | "
                  f"{a['restart_to_ready_s']} s to ready | | | journal {a['journal_bytes'] / 1e6:.1f} MB, "
                  f"RSS {a['sched_peak_rss_kib'] / 1024:.0f} MiB |")
            continue
        a_txt, a_v = speed(a)
        notes = f"n={a['n']:,}"
        if a["workload"] == "million":
            notes += (f", submit {a['submit_s_median']} s, scheduler RSS "
                      f"{a['sched_peak_rss_bytes_per_task']} B/task")
        if d is None or d.get("status", "ok") != "ok" or "tasks_per_s" not in d:
            print(f"| {row} | {a_txt} | | | {notes} |")
            continue
        d_txt, d_v = speed(d)
        if d["n"] != a["n"]:
            notes += f", Dask n={d['n']:,}"
        print(f"| {row} | {a_txt} | {d_txt} | {a_v / d_v:,.0f}× | {notes} |")
PY
