#!/usr/bin/env bash
# Idempotent setup: a Python venv with PyTorch 2.11.0 from PyPI (libtorch for tch 0.24) and numpy,
# unless LIBTORCH points at a libtorch already. Safe to run again; it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
TORCH_VERSION=2.11.0
if [ -n "${LIBTORCH:-}" ]; then
  echo "setup: using LIBTORCH=$LIBTORCH (no venv)"
  exit 0
fi
if [ ! -x "$VIRTUAL_ENV/bin/python" ]; then
  echo "setup: creating venv $VIRTUAL_ENV"
  mkdir -p "$KD_HARNESS_HOME"
  python3 -m venv "$VIRTUAL_ENV"
fi
have=$("$VIRTUAL_ENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION into $VIRTUAL_ENV (~4.6 GB, a few minutes)"
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
else
  echo "setup: torch $have already in $VIRTUAL_ENV"
fi
# numpy: the reference scripts and test fixtures (scripts/reference, tests) exchange arrays with it.
if ! "$VIRTUAL_ENV/bin/python" -c 'import numpy' 2>/dev/null; then
  echo "setup: installing numpy into $VIRTUAL_ENV"
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check numpy
fi
