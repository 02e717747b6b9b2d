#!/usr/bin/env bash
# Set up spinecount in .venv and run it on the bundled sample stacks.
# Usage: bash scripts/demo.sh [OUTDIR]      (default OUTDIR: spinecount-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
"$VENV/bin/spinecount" demo "${1:-spinecount-demo}"
