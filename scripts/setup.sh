#!/usr/bin/env bash
# Set up fedge on a fresh Debian machine: Fashion-MNIST (Debian package), a Python 3.11 virtualenv at .venv,
# and the exact pinned dependencies of requirements.lock. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${FEDGE_FASHION_MNIST_DIR:-}" ]; then
  echo "[setup] installing dataset-fashion-mnist (Debian package)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.fedge-installed"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned dependencies (requirements.lock) and fedge (editable)"
  .venv/bin/python -m pip install -q "pip==26.3"
  .venv/bin/python -m pip install -q -c requirements.lock -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import fedge, torch; print(f'[setup] fedge {fedge.__version__}, torch {torch.__version__}, ready')"
