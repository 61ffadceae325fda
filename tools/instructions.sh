#!/usr/bin/env bash
# Instructions per image of the int8 engine (valgrind callgrind), which, unlike wall time, do not
# depend on what else the machine is doing: (instructions of `subq bench --runs 3`
# − instructions of `--runs 1`) / 2 removes model loading and engine construction. RUNS=N
# (default 3) averages over N − 1 images instead: the count moves by ±1–2 M between identical
# runs (thread-pool waits), so ratios of a few percent need RUNS=11 or more.
#
#   bash tools/instructions.sh MODEL.onnx [MODEL2.onnx ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUBQ="${SUBQ:-$ROOT/target/release/subq}"
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
total() {
    local out; out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" "$SUBQ" bench --model "$1" --threads 1 --warmup 0 --runs "$2" >/dev/null 2>&1
    grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
    rm -f "$out"
}
RUNS="${RUNS:-3}"
echo "| model | instructions per image (M) |"
echo "|---|---:|"
for m in "$@"; do
    one=$(total "$m" 1); many=$(total "$m" "$RUNS")
    echo "| $(basename "$m") | $(awk -v a="$one" -v b="$many" -v n="$RUNS" 'BEGIN { printf "%.2f", (b - a) / (n - 1) / 1e6 }') |"
done
