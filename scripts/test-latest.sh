#!/usr/bin/env bash
# Dependency drift, caught before users hit it: builds (or upgrades) a separate venv, .venvs/latest, with
# the newest versions pyproject.toml allows (torch stays the CPU build 2.13.0: an unpinned torch pulls
# gigabytes), runs the fast lane there and records the date, the versions and the counts in
# scripts/latest-versions.txt (beside scripts/tested-versions.txt, the set CI installs).
#
# Usage: scripts/test-latest.sh [PYTEST ARGS]    (default: -m "not slow", the fast lane)
# Exit status: pytest's. When it passes, scripts/freeze-tested-versions.sh .venvs/latest makes these the
# tested versions; when it fails, fix the code or narrow the range in pyproject.toml (with the reason).
set -euo pipefail
cd "$(dirname "$0")/.."
export WHISPER_TUNE_VENV="${WHISPER_TUNE_VENV:-.venvs/latest}"
venv="$WHISPER_TUNE_VENV"
record=scripts/latest-versions.txt
WHISPER_TUNE_LATEST=1 scripts/setup-env.sh test
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(-m "not slow")
fi
junit="$(mktemp --suffix=.xml)"
trap 'rm -f "$junit"' EXIT
started="$(date -u +%Y-%m-%dT%H:%MZ)"
seconds=$SECONDS
set +e
"$venv/bin/python" -m pytest "${args[@]}" --junitxml="$junit"
status=$?
set -e
minutes=$(( (SECONDS - seconds + 59) / 60 ))
counts="$("$venv/bin/python" - "$junit" <<'PY'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("no results (pytest wrote no report)")
    sys.exit()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
print(f"{passed} passed, {total['failures']} failed, {total['errors']} errors, {total['skipped']} skipped")
for case in root.iter("testcase"):
    problem = case.find("failure")
    problem = case.find("error") if problem is None else problem
    if problem is not None:
        where = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        first = (problem.get("message") or "").splitlines()[0][:200] if problem.get("message") else ""
        print(f"# {problem.tag}: {where}: {first}")
PY
)"
summary="$(head -n 1 <<< "$counts")"
{
  echo "# The newest versions pyproject.toml allows, as scripts/test-latest.sh last installed and tested them"
  echo "# (a separate venv, $venv; torch kept at the CPU build). The set CI installs is tested-versions.txt."
  echo "# date: $started"
  echo "# python: $("$venv/bin/python" -c 'import platform; print(platform.python_version())'), torch: $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')"
  echo "# pytest ${args[*]@Q}: $summary (exit status $status, $minutes min)"
  tail -n +2 <<< "$counts"
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -v -E '^(#|torch==|nvidia-|triton==)'
} > "$record.new"
mv "$record.new" "$record"
echo "test-latest: $summary (exit status $status); recorded in $record" >&2
exit "$status"
