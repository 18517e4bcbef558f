#!/usr/bin/env bash
# The test suite under load: run it RUNS times in a row (3 by default) while
# two CPU-bound processes compete for the cores, and fail if any run fails.
# A test that depends on timing, or compares thread counts or blockings more
# tightly than its method's tolerance, shows up here.
#
#   tools/stress_suite.sh [RUNS] [pytest arguments...]
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
py=${PYTHON:-python}

"$py" -c "while True: pass" & burner1=$!
"$py" -c "while True: pass" & burner2=$!
trap 'kill $burner1 $burner2 2>/dev/null' EXIT

logs=$(mktemp -d)
echo "stress: logs in $logs"
failed=0
for i in $(seq 1 "$runs"); do
    start=$(date +%s)
    if "$py" -m pytest -q -p no:cacheprovider "$@" > "$logs/run-$i.log" 2>&1; then
        status=passed
    else
        status=FAILED
        failed=1
    fi
    echo "run $i: $status in $(( $(date +%s) - start )) s ($(tail -n 1 "$logs/run-$i.log"))"
done
exit $failed
