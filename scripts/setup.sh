#!/usr/bin/env bash
# Idempotent set-up: .venv with the project, and the offline Fashion-MNIST dataset.
# Usage: bash scripts/setup.sh            (called by `make run` and `make test`)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
STAMP=$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1 and the project (pip, a few minutes the first time)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[dev]"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
else
  echo "[setup] $VENV is up to date with pyproject.toml"
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  echo "[setup] Fashion-MNIST found in $FMNIST"
else
  echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else
    echo "[setup] need root for apt-get: run 'apt-get install -y dataset-fashion-mnist' as root, or pass dataset.root=DIR" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
