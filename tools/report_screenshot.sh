#!/usr/bin/env bash
# Reproduces docs/report.png: `subq report` on the bundled MobileNetV2 (small limits), rendered
# by headless Chromium (Debian package `chromium`). Usage: bash tools/report_screenshot.sh
# Environment: CHROMIUM (default chromium), OUT (report folder, default target/report-mobilenetv2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CHROMIUM="${CHROMIUM:-chromium}"
OUT="${OUT:-$ROOT/target/report-mobilenetv2}"
cargo build --release -p subq-cli
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/subq"
"$BIN" report --model assets/models/mobilenetv2_1.0_160_dogs.onnx --preset keras-mobilenet \
    --calib assets/images/calib --calib-limit 16 --images assets/images/eval --limit 100 --out "$OUT"
PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$PROFILE" --window-size=1400,2400 \
    --screenshot="$ROOT/docs/report.png" "file://$OUT/index.html"
ls -l "$ROOT/docs/report.png"
