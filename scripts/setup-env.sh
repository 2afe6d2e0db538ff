#!/usr/bin/env bash
# Create (or reuse) .venv and install whisper-tune with the given extras.
# Usage: scripts/setup-env.sh EXTRAS   e.g. "test" or "quickstart"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
# torch first and pinned: on a CPU machine this is the small CPU build; an unpinned torch would pull
# the CUDA build (gigabytes). On a GPU machine install the torch you need before running this.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
# The backend distributions in this repository (backends/<name>/pyproject.toml) register themselves as
# whisper-tune backends; the tests of each run on the CPU. Hardware libraries are not installed here.
if [ "$extras" = "test" ]; then
  for backend in backends/*/pyproject.toml; do
    [ -e "$backend" ] && .venv/bin/python -m pip install --quiet --no-deps -e "$(dirname "$backend")"
  done
fi
