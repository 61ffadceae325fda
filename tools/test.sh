#!/usr/bin/env bash
# The project's test command: makes the Python venv with ONNX Runtime (for the interop tests),
# then runs every Rust test of the workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUBQ_PYTHON="$(bash tools/setup_venv.sh)"
export SUBQ_PYTHON
cargo test --workspace --release "$@"
