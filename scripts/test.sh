#!/usr/bin/env bash
# Install the package and its test dependencies into .venv, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"   # the AiiDA daemon fixture spawns `verdi`
set +e
.venv/bin/python -m pytest -ra --durations=30 "$@"   # the 30 slowest tests: where CI time goes
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
fi
exit "$status"
