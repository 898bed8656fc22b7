#!/usr/bin/env bash
# Set up everything, then run fedge's end-to-end demo (python -m fedge.demo; flags pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m fedge.demo "$@"
