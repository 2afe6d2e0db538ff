#!/usr/bin/env bash
# Rewrite scripts/tested-versions.txt from .venv after the whole suite passed in it (see that file).
set -euo pipefail
cd "$(dirname "$0")/.."
file=scripts/tested-versions.txt
header=$(sed -n '/^#/p' "$file")
{
  echo "$header"
  .venv/bin/python -m pip freeze --exclude-editable | grep -v -E '^(#|torch==|nvidia-|triton==)'
} > "$file.new"
mv "$file.new" "$file"
echo "wrote $file ($(grep -c -v '^#' "$file") pins)"
