#!/usr/bin/env bash
# Set up everything napari-gi-seg needs on a fresh machine: a virtual environment in
# .venv with the package (editable) and its test extras, and, when run as root on
# Debian/Ubuntu, the X virtual framebuffer packages napari's Qt canvas needs headless
# and the independent DICOM/RT tools the RTSTRUCT and SEG tests check our files with
# (dicom3tools: dciodvfy; plastimatch). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v Xvfb >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libxcb-keysyms \
  || ! command -v dciodvfy >/dev/null 2>&1 || ! command -v plastimatch >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Xvfb, the xcb libraries Qt needs, dicom3tools and plastimatch (apt-get)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libxcb-icccm4 libxcb-keysyms1 \
      libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 \
      libxkbcommon-x11-0 libxcb-cursor0 libegl1 libgl1 libfontconfig1 libdbus-1-3 \
      dicom3tools plastimatch >/dev/null
  else
    echo "setup: not root: GUI tests need 'xvfb libxcb-icccm4 libxcb-keysyms1'," \
      "the RTSTRUCT/SEG tests 'dicom3tools plastimatch' (apt-get install)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import napari_gi_seg, segmentation_models_pytorch, napari, pytestqt, highdicom, xdist, itk" >/dev/null 2>&1; then
  echo "setup: installing napari-gi-seg and its dependencies into .venv (torch is large; a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[testing]"
fi
echo "setup: ready (.venv/bin/napari-gi-seg)" >&2
