#!/usr/bin/env bash
# The whole test suite: sets itself up (scripts/setup.sh), then runs pytest under a
# virtual X server (pytest-xvfb starts Xvfb per worker; napari's canvas needs a real X
# display), in two pytest-xdist workers of one torch thread each (a test file stays on
# one worker, so its module fixtures are built once). `-n 0` (or GI_SEG_TEST_WORKERS=0)
# runs it in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -n "${GI_SEG_TEST_WORKERS:-2}" --dist loadfile "$@"
