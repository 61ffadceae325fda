#!/usr/bin/env bash
# Subtensor-over-per-tensor latency ratio of two subq binaries, measured in one alternation:
# per round A on SUB, A on PT, B on SUB, B on PT (`subq --threads 1 bench --runs 60 --warmup 5`).
# Prints, per binary, the median over rounds of SUB/PT, and B/A on each file.
#
#   bash tools/alternate_sub_pt.sh OLD_SUBQ NEW_SUBQ sub.onnx per-tensor.onnx [ROUNDS=11]
set -euo pipefail
A=$1; B=$2; S=$3; P=$4; R=${5:-11}
m() { "$1" --threads 1 bench --model "$2" --runs 60 --warmup 5 --json | python3 -c "import json,sys;print(json.load(sys.stdin)['median_ms'])"; }
for _ in $(seq "$R"); do echo "$(m "$A" "$S") $(m "$A" "$P") $(m "$B" "$S") $(m "$B" "$P")"; done | python3 -c "
import sys, statistics as st
r = [tuple(map(float, l.split())) for l in sys.stdin]
ra = [a / b for a, b, _, _ in r]; rb = [c / d for _, _, c, d in r]
print(f'A sub/pt {st.median(ra):.3f} ({min(ra):.3f}-{max(ra):.3f})  B sub/pt {st.median(rb):.3f} ({min(rb):.3f}-{max(rb):.3f})  '
      f'B/A sub {st.median([x[2] / x[0] for x in r]):.3f} pt {st.median([x[3] / x[1] for x in r]):.3f}')"
