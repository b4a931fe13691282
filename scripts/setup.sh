#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with the project and its pinned dependencies.
# Idempotent and quick when nothing changed (a stamp records the hash of pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY' || { echo "setup: Python 3.11 is required (torch==2.13.0's CPU wheel is built for it)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing interp-assets and its pinned dependencies into .venv ..."
    # torch first and alone: pinned, it resolves to the CPU wheel on local disk (an unpinned
    # torch would pull a multi-GB CUDA build). pip's location warnings are noise here.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2> >(grep -v "^WARNING: Location" >&2)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
    echo "$want" > "$stamp"
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, dagster; print(f"torch {torch.__version__}, dagster {dagster.__version__}")'))"
