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
# The run above tests the best kernels this CPU has (AMX and AVX-512 VNNI tiles where present). The
# kernel battery runs again with them switched off step by step, so the 256-bit VNNI and the
# plain AVX2 kernels stay proven against the references too.
if [[ $# -eq 0 ]]; then
    SUBQ_SIMD=avx512 cargo test --release -p subq-kernels
    SUBQ_SIMD=avxvnni cargo test --release -p subq-kernels
    SUBQ_SIMD=avx2 cargo test --release -p subq-kernels
fi
