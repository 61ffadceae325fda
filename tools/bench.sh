#!/usr/bin/env bash
# Latency of subq's engines vs ONNX Runtime on the same models, same machine, one run.
# Builds release, runs `subq bench` and tools/ort_bench.py (both batch 1, 1 thread by default)
# and prints a markdown table on stdout (progress goes to stderr).
#
#   bash tools/bench.sh            # RUNS=200 WARMUP=20 THREADS=1 by default
#   RUNS=50 bash tools/bench.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
M=assets/models

# Our own QDQ exports (per-tensor and subtensor), made here so both engines time the same files.
Q="$(mktemp -d)"
trap 'rm -rf "$Q"' EXIT
cargo build --release --quiet -p subq-cli >&2
for spec in "efficientnet_lite0:efficientnet-lite" "mobilenetv2_1.0_160_dogs:keras-mobilenet"; do
    m="${spec%%:*}"; preset="${spec##*:}"
    for scheme in per-tensor subtensor; do
        echo "bench.sh: quantizing $m ($scheme)" >&2
        ./target/release/subq quantize --model "$M/$m.onnx" --calib assets/images/calib --preset "$preset" \
            --scheme "$scheme" -o "$Q/$m.$scheme.onnx" >/dev/null 2>&1
    done
done

# label | model for `subq bench` ("-": none) | model for ONNX Runtime ("-": none).
ROWS=(
    "EfficientNet-Lite0 FP32 (224)|$M/efficientnet_lite0.onnx|$M/efficientnet_lite0.onnx"
    "EfficientNet-Lite0 int8 ORT's per-channel QDQ|$M/efficientnet_lite0.ort_qdq_per_channel.onnx|$M/efficientnet_lite0.ort_qdq_per_channel.onnx"
    "EfficientNet-Lite0 int8 subq per-tensor QDQ|$Q/efficientnet_lite0.per-tensor.onnx|$Q/efficientnet_lite0.per-tensor.onnx"
    "EfficientNet-Lite0 int8 subq subtensor QDQ|$Q/efficientnet_lite0.subtensor.onnx|$Q/efficientnet_lite0.subtensor.onnx"
    "MobileNetV2-1.0 dogs FP32 (160)|$M/mobilenetv2_1.0_160_dogs.onnx|$M/mobilenetv2_1.0_160_dogs.onnx"
    "MobileNetV2-1.0 dogs int8 ORT's per-channel QDQ|$M/mobilenetv2_1.0_160_dogs.ort_qdq_per_channel.onnx|$M/mobilenetv2_1.0_160_dogs.ort_qdq_per_channel.onnx"
    "MobileNetV2-1.0 dogs int8 subq per-tensor QDQ|$Q/mobilenetv2_1.0_160_dogs.per-tensor.onnx|$Q/mobilenetv2_1.0_160_dogs.per-tensor.onnx"
    "MobileNetV2-1.0 dogs int8 subq subtensor QDQ|$Q/mobilenetv2_1.0_160_dogs.subtensor.onnx|$Q/mobilenetv2_1.0_160_dogs.subtensor.onnx"
)

RUNS="${RUNS:-200}"
WARMUP="${WARMUP:-20}"
THREADS="${THREADS:-1}"

log() { echo "bench.sh: $*" >&2; }

PY="$(bash tools/setup_venv.sh)"
log "building release"
cargo build --release --quiet -p subq-cli >&2
SUBQ="$ROOT/target/release/subq"

median_of() { "$PY" -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print("%.2f" % d["median_ms"])'; }

ort_version="$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)')"
# int8 rows also time ORT's exact u8s8 path (session.x64quantprecision): its default path
# saturates on AVX2 CPUs without VNNI and computes something else than the file says.
table="| model | subq median ms | ORT median ms | ratio subq/ORT | ORT exact ms | ratio subq/ORT exact |
| --- | ---: | ---: | ---: | ---: | ---: |"
for row in "${ROWS[@]}"; do
    IFS='|' read -r label subq_model ort_model <<<"$row"
    s="—"; o="—"; r="—"; oe="—"; re="—"
    if [[ "$subq_model" != "-" ]]; then
        log "subq bench $subq_model"
        s="$("$SUBQ" bench --threads "$THREADS" --runs "$RUNS" --warmup "$WARMUP" --model "$subq_model" --json | median_of)"
    fi
    if [[ "$ort_model" != "-" ]]; then
        log "ort_bench $ort_model"
        o="$("$PY" tools/ort_bench.py "$ort_model" --threads "$THREADS" --runs "$RUNS" --warmup "$WARMUP" --json | median_of)"
    fi
    if [[ "$ort_model" != "-" && "$label" == *int8* ]]; then
        log "ort_bench --exact $ort_model"
        oe="$("$PY" tools/ort_bench.py "$ort_model" --exact --threads "$THREADS" --runs "$RUNS" --warmup "$WARMUP" --json | median_of)"
    fi
    if [[ "$s" != "—" && "$o" != "—" ]]; then
        r="$("$PY" -c "print('%.2f' % ($s / $o))")"
    fi
    if [[ "$s" != "—" && "$oe" != "—" ]]; then
        re="$("$PY" -c "print('%.2f' % ($s / $oe))")"
    fi
    table+=$'\n'"| $label | $s | $o | $r | $oe | $re |"
done

echo "$table"
echo
echo "Batch 1, $THREADS thread(s), $RUNS timed runs after $WARMUP warm-up, random input; ONNX Runtime $ort_version CPU, default graph optimizations; $(nproc) cores, $(date -u +%Y-%m-%d)."
