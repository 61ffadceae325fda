#!/usr/bin/env bash
# The project's test command: makes the Python venv with ONNX Runtime (for the interop tests),
# then runs every Rust test of the workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUBQ_PYTHON="$(bash tools/setup_venv.sh)"
export SUBQ_PYTHON
# The fuzz test of the importer and QDQ reader runs this long (a few seconds by default).
export SUBQ_FUZZ_SECONDS="${SUBQ_FUZZ_SECONDS:-60}"
cargo test --workspace --release "$@"
