#!/usr/bin/env bash
# The main job, end to end on the embedded default: install, create a project-local AiiDA profile
# (verdi presto: SQLite + the built-in ZeroMQ broker) if none exists, start the daemon, submit
# optddap.base on the real NaMgF3 CHGCAR in examples/, wait, print the charge table, then query the
# stored results with QueryBuilder. Safe to run again: it reuses the profile and the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
export AIIDA_PATH="${AIIDA_PATH:-$PWD/.aiida_profile}"   # keeps the profile inside the project
PROFILE="${OPTDDAP_PROFILE:-optddap}"

if ! verdi profile show "$PROFILE" >/dev/null 2>&1; then
  verdi presto --profile-name "$PROFILE" --use-zeromq
fi
if ! verdi -p "$PROFILE" daemon status >/dev/null 2>&1; then
  verdi -p "$PROFILE" daemon start 1
fi
aiida-optddap -p "$PROFILE" setup
# the example has no POTCAR beside it: its Z_val (Na 1, Mg 2, F 7) come from the POTCAR table, asked for
aiida-optddap -p "$PROFILE" launch fit examples/NaMgF3_CHG.gz --param guess_zval=true --daemon --wait --timeout 900
verdi -p "$PROFILE" run examples/query_charges.py
echo "Profile '$PROFILE' lives in $AIIDA_PATH; stop its daemon with: AIIDA_PATH=$AIIDA_PATH verdi -p $PROFILE daemon stop"
