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
# On a CPU with AVX-VNNI the run above tests the VNNI kernels; the kernel battery runs once more
# with them switched off, so the plain AVX2 kernels stay proven against the references too.
if [[ $# -eq 0 ]]; then
    SUBQ_SIMD=avx2 cargo test --release -p subq-kernels
fi
