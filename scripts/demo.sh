#!/usr/bin/env bash
# The main job: sets itself up, then opens napari with the CHAOS sample, the default
# model and the widgets docked, and segments it. Without a display it runs headless
# (load -> segment -> evaluate against the manual labels) and says what it did.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/napari-gi-seg demo --headless "$@"
fi
exec .venv/bin/napari-gi-seg demo "$@"
