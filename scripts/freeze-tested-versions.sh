#!/usr/bin/env bash
# Rewrite scripts/tested-versions.txt from a venv (default .venv; e.g. .venvs/latest after
# scripts/test-latest.sh) once the whole suite passed in it (see that file).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
file=scripts/tested-versions.txt
header=$(sed -n '/^#/p' "$file")
{
  echo "$header"
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -v -E '^(#|torch==|nvidia-|triton==)'
} > "$file.new"
mv "$file.new" "$file"
echo "wrote $file from $venv ($(grep -c -v '^#' "$file") pins)"
