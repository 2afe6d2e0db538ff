#!/usr/bin/env bash
# Run the test suite on a fresh machine: installs what the tests need into .venv, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k config).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh test
exec .venv/bin/python -m pytest "$@"
