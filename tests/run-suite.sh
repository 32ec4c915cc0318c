#!/usr/bin/env bash
# The whole test suite, as `make test` runs it: in two parts at once. The fleet test
# (tests/test_fleet.py, network namespaces) spends most of its ~75 s waiting for cut
# links to time out, so it runs beside the rest instead of after it; its output is
# printed when both are done. Exits non-zero if either part failed.
set -uo pipefail
py="${1:-.venv/bin/python}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$py" -m pytest -q -p no:cacheprovider tests/test_fleet.py >"$log" 2>&1 &
fleet=$!
"$py" -m pytest -q --ignore=tests/test_fleet.py
rest=$?
wait "$fleet"
fleet_status=$?
echo "--- tests/test_fleet.py, run beside the rest:"
cat "$log"
[ "$rest" -eq 0 ] && [ "$fleet_status" -eq 0 ]
