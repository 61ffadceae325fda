#!/usr/bin/env bash
# Ablation: subq's techniques added one at a time (every weight per-tensor), on both bundled
# models; prints a Markdown table of agreement and logits SQNR against FP32 (plus top-1 for
# EfficientNet-Lite0). 100 calibration images, 400 evaluation images.
#
#   bash tools/ablation.sh            # both models
#   LIMIT=100 bash tools/ablation.sh  # quicker, on the first 100 eval images
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo build --release -q -p subq-cli
SUBQ=./target/release/subq
OUT=$(mktemp -d)
LIMIT_ARGS=()
[[ -n "${LIMIT:-}" ]] && LIMIT_ARGS=(--limit "$LIMIT")

STEPS=(
  "per-tensor, min-max ranges|--scheme per-tensor"
  "+ MSE activation ranges|--scheme subtensor --no-cle --no-split --no-clip --no-bias-correction"
  "+ weight clipping|--scheme subtensor --no-cle --no-split --no-bias-correction"
  "+ bias correction|--scheme subtensor --no-cle --no-split --no-weight-correction"
  "+ splits|--scheme subtensor --no-cle --no-weight-correction"
  "+ CLE (strength 0.5)|--scheme subtensor --cle --no-weight-correction"
  "+ weight correction|--scheme subtensor --cle"
  "subtensor default (CLE chosen on calibration data)|--scheme subtensor"
  "subtensor, data-free|--scheme subtensor --data-free"
)
MODELS=(
  "efficientnet_lite0|efficientnet-lite|--labels assets/imagenet_synsets.txt"
  "mobilenetv2_1.0_160_dogs|keras-mobilenet|"
)

echo "| step | model | top-1 | agreement | logits SQNR | split layers |"
echo "|---|---|---|---|---|---|"
for m in "${MODELS[@]}"; do
  IFS='|' read -r model preset labels <<<"$m"
  for s in "${STEPS[@]}"; do
    IFS='|' read -r label args <<<"$s"
    q="$OUT/$model.onnx"
    # shellcheck disable=SC2086
    $SUBQ quantize --model "assets/models/$model.onnx" --calib assets/images/calib --preset "$preset" $args -o "$q" --json "$OUT/q.json" >/dev/null 2>&1
    # shellcheck disable=SC2086
    $SUBQ eval --model "$q" --images assets/images/eval $labels --reference "assets/models/$model.onnx" "${LIMIT_ARGS[@]}" --json "$OUT/e.json" >/dev/null 2>&1
    python3 - "$OUT/e.json" "$OUT/q.json" "$label" "$model" <<'PY'
import json, sys
e, q = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
top1 = f"{100*e['top1']:.2f}%" if e.get('top1') is not None else "—"
print(f"| {sys.argv[3]} | {sys.argv[4]} | {top1} | {100*e['agreement']:.2f}% | {e['sqnr_db']:.2f} dB | {q.get('split_layers', 0)} |")
PY
  done
done
rm -rf "$OUT"
