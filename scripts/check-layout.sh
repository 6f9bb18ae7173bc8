#!/usr/bin/env bash
# Checks the layout rules of src/: files of at most 600 lines, functions of
# at most 80 lines, and no import cycle between files (`use crate::…`,
# `use super::…` and `super::x::` paths build the graph). Prints offenders;
# exits 1 on any only with --strict.
#
#   scripts/check-layout.sh [--strict] [DIR]    (DIR defaults to src)
set -euo pipefail

strict=0
dir=src
for a in "$@"; do
    case "$a" in
        --strict) strict=1 ;;
        -h | --help)
            sed -n 2,7p "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) dir="$a" ;;
    esac
done
cd "$(dirname "$0")/.."
[ -d "$dir" ] || { echo "check-layout: no directory $dir" >&2; exit 2; }

MAX_FILE=600
MAX_FN=80
bad=0

# Files over MAX_FILE lines.
while read -r n f; do
    [ "$f" = total ] && continue
    if [ "$n" -gt "$MAX_FILE" ]; then
        echo "file $f: $n lines (at most $MAX_FILE)"
        bad=$((bad + 1))
    fi
done < <(find "$dir" -name '*.rs' -print0 | sort -z | xargs -0 wc -l)

# Functions over MAX_FN lines: from a line declaring `fn` to the line at the
# same indentation that closes it.
fns=$(find "$dir" -name '*.rs' -print0 | sort -z | xargs -0 awk -v max="$MAX_FN" '
    FNR == 1 { infn = 0 }
    {
        if (!infn && match($0, /^[ \t]*(pub[^ ]* )?(const )?(async )?(unsafe )?(extern [^ ]* )?fn [A-Za-z0-9_]+/)) {
            # A declaration without a body (a trait item) ends with ";".
            if ($0 !~ /\{/ && $0 ~ /;[ \t]*$/) next
            indent = $0; sub(/[^ \t].*$/, "", indent)
            name = $0; sub(/^.*fn /, "", name); sub(/[^A-Za-z0-9_].*$/, "", name)
            start = FNR; infn = 1
            # One-line body: `fn x() { ... }`.
            line = $0
            if (line ~ /\{/ && gsub(/\{/, "{", line) == gsub(/\}/, "}", line)) infn = 0
            next
        }
        if (infn && index($0, indent "}") == 1) {
            len = FNR - start + 1
            if (len > max) printf "fn %s:%d %s: %d lines (at most %d)\n", FILENAME, start, name, len, max
            infn = 0
        }
    }')
if [ -n "$fns" ]; then
    echo "$fns"
    bad=$((bad + $(echo "$fns" | wc -l)))
fi

# Import graph between files, then its cycles (strongly connected parts of
# more than one file).
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT
module_of() { # src/a/b.rs or src/a/b/mod.rs -> a::b ; src/lib.rs -> (crate)
    local p="${1#"$dir"/}"
    p="${p%.rs}"
    p="${p%/mod}"
    case "$p" in lib | main) p="" ;; esac
    echo "${p//\//::}"
}
file_of() { # a::b -> the file that defines module a::b, or its nearest parent
    local m="$1" p
    [ -z "$m" ] && { [ -f "$dir/lib.rs" ] && echo "$dir/lib.rs"; return; }
    while [ -n "$m" ]; do
        p="$dir/${m//:://}"
        [ -f "$p.rs" ] && { echo "$p.rs"; return; }
        [ -f "$p/mod.rs" ] && { echo "$p/mod.rs"; return; }
        case "$m" in *::*) m="${m%::*}" ;; *) m="" ;; esac
    done
}
while IFS= read -r -d '' f; do
    if [[ "$f" == */bin/* ]]; then continue; fi
    self=$(module_of "$f")
    # The module a file's `super::` names: its parent (mod.rs: one level up more).
    parent="${self%::*}"
    [ "$parent" = "$self" ] && parent=""
    # `use crate::x::y`, `crate::x::y::` in paths, `use super::x`, `super::x::`.
    { grep -oE '\b(crate|super)(::[A-Za-z_][A-Za-z0-9_]*)*' "$f" || true; } | sort -u | while read -r path; do
        case "$path" in
            crate) continue ;;
            super) target="$parent" ;;
            crate::*) target="${path#crate::}" ;;
            super::*)
                base="$parent"
                rest="${path#super::}"
                target="${base:+$base::}$rest"
                ;;
        esac
        to=$(file_of "$target")
        if [ -n "$to" ] && [ "$to" != "$f" ]; then echo "$f $to"; fi
    done
done < <(find "$dir" -name '*.rs' -print0 | sort -z) | sort -u > "$edges"

# A file depends on its submodules' files only through `mod x;`, which is
# not an import: edges to one's own descendants are kept, edges from a
# child to its parent's mod.rs count (they are the usual `use super::X`).
# Report each cycle as the files of one strongly connected component, with
# the edges inside it.
cycles=$(python3 - "$edges" <<'EOF'
import sys
from collections import defaultdict
g = defaultdict(set)
for line in open(sys.argv[1]):
    a, b = line.split()
    g[a].add(b)
nodes = set(g) | {b for v in g.values() for b in v}
index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(100000)
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in g[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1:
            out.append(sorted(comp))
for v in sorted(nodes):
    if v not in index:
        visit(v)
for comp in out:
    inside = sorted(f"{a} -> {b}" for a in comp for b in g[a] if b in comp)
    print("cycle: " + " ".join(comp) + "  (" + "; ".join(inside) + ")")
EOF
)
if [ -n "$cycles" ]; then
    echo "$cycles"
    bad=$((bad + $(echo "$cycles" | wc -l)))
fi

if [ "$bad" -eq 0 ]; then
    echo "check-layout: $dir is within the limits (files <= $MAX_FILE lines, fns <= $MAX_FN lines, no import cycle)"
else
    echo "check-layout: $bad offenders in $dir"
    [ "$strict" -eq 1 ] && exit 1
fi
exit 0
