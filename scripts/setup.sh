#!/usr/bin/env bash
# Set up SegGradCAM on a fresh Debian/Ubuntu machine: system data packages and a
# virtual environment in .venv with the package and its test dependencies.
# Usage: bash scripts/setup.sh        (idempotent; re-running is fast)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
# dicom3tools: the DICOM validator dciodvfy; orthanc + orthanc-dicomweb: the PACS the DICOMweb tests start.
APT_PACKAGES="mricron-data insighttoolkit5-examples chromium dicom3tools orthanc orthanc-dicomweb"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "Installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# node and npm run the Slicer Extensions Index's prettier (Testing/extension_index); a node
# already on the PATH (e.g. from NodeSource, which bundles npm) is kept.
if ! command -v npm >/dev/null 2>&1; then
  echo "Installing Debian packages: nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: plain 'torch' would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[test]"
# The prettier + plugin versions the Extensions Index's pre-commit hook pins, exactly as locked
# in Testing/extension_index/package-lock.json; reinstalled only when the lock file changes (a
# copy of the lock the install was made from is kept in node_modules).
LINT=Testing/extension_index
if ! cmp -s "$LINT/package-lock.json" "$LINT/node_modules/.installed-package-lock.json"; then
  npm ci --prefix "$LINT" --no-audit --no-fund --loglevel=error >/dev/null
  cp "$LINT/package-lock.json" "$LINT/node_modules/.installed-package-lock.json"
fi
echo "SegGradCAM is set up in .venv (activate with: . .venv/bin/activate)"
