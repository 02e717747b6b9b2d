#!/usr/bin/env bash
# Set up spinecount with its test extras in .venv (and, as root, the Debian packages the tests
# need: Xvfb and the X libraries Qt uses), then run the full test suite.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v Xvfb >/dev/null; then
  echo "installing Debian packages for headless GUI tests (xvfb, libxcb...)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends \
    xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-cursor0 \
    libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 \
    libgl1 libegl1 libfontconfig1 libdbus-1-3 >/dev/null \
    || echo "warning: could not install the Debian packages; GUI tests may fail" >&2
fi
EXTRAS=test
source scripts/_venv.sh
"$VENV/bin/python" -m pytest "$@"
