#!/usr/bin/env bash
# Set up everything, then run the checks: ruff, mypy and the default pytest suite (slow tests excluded;
# FEDGE_SLOW=1 includes them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FEDGE_NO_PROGRESS=1
echo "[test] ruff"; .venv/bin/ruff check .
echo "[test] mypy"; .venv/bin/mypy -p fedge
marker=(); [ "${FEDGE_SLOW:-0}" = "1" ] && marker=(-m "slow or not slow")
echo "[test] pytest"
set +e
.venv/bin/python -m pytest "${marker[@]}" -q -ra "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure here, not a pass
[ "$rc" -eq 5 ] && echo "[test] no tests were collected" >&2
exit "$rc"
