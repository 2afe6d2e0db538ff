#!/usr/bin/env bash
# Create (or reuse) a virtual environment (.venv, or WHISPER_TUNE_VENV) and install whisper-tune with the
# given extras.
# Usage: scripts/setup-env.sh EXTRAS   e.g. "test" or "quickstart"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${WHISPER_TUNE_VENV:-.venv}"
py="$venv/bin/python"
# pip shows what it downloads and installs (a first install takes minutes: no --quiet here).
step() { echo "setup-env: $*" >&2; }
step "creating or reusing $venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
step "upgrading pip"
"$py" -m pip install --quiet --upgrade pip
# torch first and pinned: on a CPU machine this is the small CPU build; an unpinned torch would pull
# the CUDA build (gigabytes). On a GPU machine install the torch you need before running this.
if ! "$py" -c "import torch" 2>/dev/null; then
  step "installing torch 2.13.0"
  "$py" -m pip install --progress-bar on "torch==2.13.0"
fi
# The dependency versions CI last passed with (scripts/tested-versions.txt), unless WHISPER_TUNE_LATEST=1
# asks for the newest ones pyproject.toml allows: then every dependency is upgraded (eagerly, so an
# existing venv moves too) except torch, which stays the build installed above.
constraints=(-c scripts/tested-versions.txt)
upgrade=()
versions="the tested versions"
if [ "${WHISPER_TUNE_LATEST:-0}" = "1" ]; then
  keep_torch="$(mktemp)"
  trap 'rm -f "$keep_torch"' EXIT
  "$py" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > "$keep_torch"
  constraints=(-c "$keep_torch")
  upgrade=(--upgrade --upgrade-strategy eager)
  versions="the newest allowed versions (WHISPER_TUNE_LATEST=1; $(cat "$keep_torch") kept)"
fi
step "installing whisper-tune${extras:+[$extras]} and its dependencies (transformers, datasets, ...): $versions"
"$py" -m pip install --progress-bar on ${upgrade[@]+"${upgrade[@]}"} "${constraints[@]}" -e ".${extras:+[$extras]}"
# The backend distributions in this repository (backends/<name>/pyproject.toml) register themselves as
# whisper-tune backends; the tests of each run on the CPU. Hardware libraries are not installed here.
if [ "$extras" = "test" ]; then
  for backend in backends/*/pyproject.toml; do
    if [ -e "$backend" ]; then
      step "installing the backend $(dirname "$backend")"
      "$py" -m pip install --progress-bar on --no-deps -e "$(dirname "$backend")"
    fi
  done
fi
step "done"
