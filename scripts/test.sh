#!/usr/bin/env bash
# The whole test suite: sets itself up (scripts/setup.sh), then runs pytest under a
# virtual X server (pytest-xvfb starts Xvfb; napari's canvas needs a real X display).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest "$@"
