#!/usr/bin/env bash
# One set-up path for a fresh machine: a virtualenv at $CAPFILT_VENV (default .venv) with
# torch installed first, then capfilt and its dependencies. Idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CAPFILT_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.capfilt-installed"
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "capfilt setup: installing into $VENV (one time, a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
# torch first: a bare "torch" requirement would pull a multi-GB CUDA build on a CPU host.
# TORCH_SPEC lets a GPU host choose its CUDA build (e.g. TORCH_SPEC="torch==2.13.0").
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install "${TORCH_SPEC:-torch==2.13.0}"
fi
# img2dataset checks for albumentations updates over the network at import unless told not to.
export NO_ALBUMENTATIONS_UPDATE=1
pip install -e ".[test,bench]"
"$VENV/bin/python" -c "import torch, transformers, ray, pyarrow, duckdb, webdataset, img2dataset" \
  || { echo "capfilt setup: install incomplete" >&2; exit 1; }
echo "$want" > "$STAMP"
