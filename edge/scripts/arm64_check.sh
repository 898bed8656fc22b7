#!/usr/bin/env bash
# ARM64 parity check: run a bundle's models under ONNX Runtime on aarch64 (Debian arm64 + qemu-user) and
# compare with the x86 outputs stored in the bundle (reference.npz). Correctness, not speed.
#
#   sudo edge/scripts/arm64_check.sh BUNDLE_DIR [ARM64_ROOT]      (as root: debootstrap and chroot)
#
# What it does (everything from Debian packages and PyPI wheels, no binfmt_misc registration needed):
#   1. apt-get install qemu-user-static debootstrap (if missing)
#   2. debootstrap --foreign an arm64 bookworm root with python3.11 (first stage only downloads + unpacks;
#      the debs it fetched are unpacked with dpkg-deb -x, so no arm64 binary runs during set-up)
#   3. pip install --target the aarch64 (manylinux) wheels of onnxruntime and numpy, same versions as here
#   4. copy the bundle and fedge's torch-free runtime files (fedge/errors.py, edge/{errors,manifest,runtime}.py)
#   5. chroot + qemu-aarch64-static python3.11 edge/scripts/arm64_parity.py: EdgeModel.self_test per model
# The root is kept (default /var/tmp/fedge-arm64-root) so later runs skip steps 1-3.
set -euo pipefail
BUNDLE=$(realpath "${1:?usage: arm64_check.sh BUNDLE_DIR [ARM64_ROOT]}")
ROOT=${2:-/var/tmp/fedge-arm64-root}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}   # bookworm ships python3.11, the project's Python

[ "$(id -u)" = 0 ] || { echo "arm64_check: run as root (debootstrap, chroot)" >&2; exit 2; }
[ -f "$BUNDLE/manifest.json" ] || { echo "arm64_check: $BUNDLE is not a bundle (no manifest.json)" >&2; exit 2; }

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap
fi

if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  echo "arm64_check: building arm64 $SUITE root in $ROOT" >&2
  rm -rf "$ROOT"
  debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3-minimal,libpython3.11-stdlib "$SUITE" "$ROOT" "$MIRROR" >&2
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
fi
cp "$(command -v qemu-aarch64-static)" "$ROOT/usr/bin/"

ORT_VERSION=$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)')
NP_VERSION=$("$PY" -c 'import numpy; print(numpy.__version__)')
if [ ! -f "$ROOT/opt/fedge-site/.ort-$ORT_VERSION-np-$NP_VERSION" ]; then
  rm -rf "$ROOT/opt/fedge-site"
  "$PY" -m pip install -q --target "$ROOT/opt/fedge-site" --python-version 3.11 --implementation cp \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
    --only-binary=:all: "onnxruntime==$ORT_VERSION" "numpy==$NP_VERSION" 2>&1 | grep -v "dependency conflicts\|requires\|Location\|^$" >&2 || true
  touch "$ROOT/opt/fedge-site/.ort-$ORT_VERSION-np-$NP_VERSION"
fi

SRC="$ROOT/opt/fedge-src/fedge"
rm -rf "$ROOT/opt/fedge-src" "$ROOT/tmp/bundle"
mkdir -p "$SRC/edge" "$ROOT/tmp"
cp "$REPO/fedge/__init__.py" "$REPO/fedge/errors.py" "$SRC/"
cp "$REPO/edge/__init__.py" "$REPO/edge/errors.py" "$REPO/edge/manifest.py" "$REPO/edge/runtime.py" "$SRC/edge/"
cp "$REPO/edge/scripts/arm64_parity.py" "$ROOT/opt/"
cp -r "$BUNDLE" "$ROOT/tmp/bundle"

# ORT's cpuinfo reads /sys; without it ORT warns and uses generic kernels, which is fine for correctness.
PYTHONPATH=/opt/fedge-site:/opt/fedge-src chroot "$ROOT" /usr/bin/qemu-aarch64-static /usr/bin/python3.11 \
  /opt/arm64_parity.py /tmp/bundle 2> >(grep -v "cpuinfo" >&2)
