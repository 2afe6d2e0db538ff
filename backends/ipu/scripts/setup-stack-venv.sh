#!/usr/bin/env bash
# Create (or reuse) .venvs/ipu-stack: the IPU worker's pinned Python stack WITHOUT the Poplar SDK, for the
# two CPU tests that need upstream code (backends/ipu/tests/test_ipu_conformance.py and
# test_ipu_worker_smoke.py). Installs optimum-graphcore 0.7.1, transformers 4.29.2 and the rest of
# backends/ipu/worker/constraints.txt, plus a CPU torch in place of the SDK's torch 2.0.1.
#
# Python: 3.11, not the SDK's 3.8. The only CPU build of torch pip can install on this machine is the
# 2.13.0 wheel for Python 3.11 (every torch for 3.8 on the registry drags gigabytes of CUDA libraries);
# the pinned stack itself installs on 3.11 (tokenizers 0.13.3 has a cp311 wheel; 3.12 has none).
# Override with IPU_STACK_PYTHON=/path/to/python (then install a CPU torch for it yourself first).
#
# Usage: backends/ipu/scripts/setup-stack-venv.sh   (from anywhere; ~1-2 minutes with a warm pip cache)
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
venv="$root/.venvs/ipu-stack"
python="${IPU_STACK_PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 "$HOME/.pyenv/versions/3.11.7/bin/python" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python="$candidate"; break
    fi
  done
fi
[ -n "$python" ] || { echo "no Python 3.11 found (set IPU_STACK_PYTHON)" >&2; exit 1; }
step() { echo "setup-stack-venv: $*" >&2; }
step "creating or reusing $venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --progress-bar on)  # no --quiet: a first install takes minutes
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  step "installing torch 2.13.0"
  "${pip[@]}" "torch==2.13.0"
fi
# optimum-graphcore's unpinned requirements (datasets, scipy, ...) come in too: it is the real package.
step "installing optimum-graphcore 0.7.1 with the worker's pinned stack"
"${pip[@]}" -c "$root/backends/ipu/worker/constraints.txt" "optimum-graphcore==0.7.1"
step "installing the IPU worker"
"${pip[@]}" --no-deps -e "$root/backends/ipu/worker"
"$venv/bin/python" -c "import transformers, optimum, torch; print('ipu-stack venv:', 'transformers', transformers.__version__, 'torch', torch.__version__)"
