#!/usr/bin/env bash
# Create (or reuse) .venv and install whisper-tune with the given extras.
# Usage: scripts/setup-env.sh EXTRAS   e.g. "test" or "quickstart"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
# pip shows what it downloads and installs (a first install takes minutes: no --quiet here).
step() { echo "setup-env: $*" >&2; }
step "creating or reusing .venv"
python3 -m venv .venv
step "upgrading pip"
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: on a CPU machine this is the small CPU build; an unpinned torch would pull
# the CUDA build (gigabytes). On a GPU machine install the torch you need before running this.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  step "installing torch 2.13.0"
  .venv/bin/python -m pip install --progress-bar on "torch==2.13.0"
fi
# The dependency versions CI last passed with (scripts/tested-versions.txt), unless WHISPER_TUNE_LATEST=1
# asks for the newest ones pyproject.toml allows.
constraints=(-c scripts/tested-versions.txt)
versions="the tested versions"
if [ "${WHISPER_TUNE_LATEST:-0}" = "1" ]; then
  constraints=()
  versions="the newest allowed versions (WHISPER_TUNE_LATEST=1)"
fi
step "installing whisper-tune${extras:+[$extras]} and its dependencies (transformers, datasets, ...): $versions"
.venv/bin/python -m pip install --progress-bar on ${constraints[@]+"${constraints[@]}"} -e ".${extras:+[$extras]}"
# The backend distributions in this repository (backends/<name>/pyproject.toml) register themselves as
# whisper-tune backends; the tests of each run on the CPU. Hardware libraries are not installed here.
if [ "$extras" = "test" ]; then
  for backend in backends/*/pyproject.toml; do
    if [ -e "$backend" ]; then
      step "installing the backend $(dirname "$backend")"
      .venv/bin/python -m pip install --progress-bar on --no-deps -e "$(dirname "$backend")"
    fi
  done
fi
step "done"
