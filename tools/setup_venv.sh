#!/usr/bin/env bash
# Create (if missing) the repo's Python venv at .venv/ with the pinned packages that the
# comparison tools (tools/ort_bench.py, tools/ort_eval.py) and tests need. Idempotent and quiet:
# re-running only checks the pins. Prints the venv's python path on success.
#
#   PY=$(bash tools/setup_venv.sh)
#
# PYTHON selects the interpreter used to create the venv (default: python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

# Pinned versions (the ones that install on the project's machines).
PINS=(
    "onnxruntime==1.32.0"
    "numpy==2.4.6"
    "pillow==13.0.0"
    "onnx==1.23.2"
)

log() { echo "setup_venv: $*" >&2; }

if [[ ! -x "$PY" ]]; then
    log "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV" >&2 || { log "python3 -m venv failed (on Debian: apt-get install python3-venv)"; exit 1; }
fi

# Skip pip entirely when every pin is already satisfied (fast path for repeated calls).
if ! "$PY" - "${PINS[@]}" >/dev/null 2>&1 <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYEOF
then
    log "installing ${PINS[*]}"
    if ! "$PY" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2; then
        log "pip install failed"
        exit 1
    fi
fi

echo "$PY"
