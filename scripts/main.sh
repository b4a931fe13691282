#!/usr/bin/env bash
# README command 1: set up, then run the main job (the whole study on the tiny model, local
# compute, the embedded SQLite instance in dagster_home/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="$PWD/dagster_home"
# A study written before experiments had their own folders moves to studies/<name>/ once.
if [ -d dagster_home/storage/models ] && [ ! -e studies/tiny ]; then .venv/bin/python -m interp_assets.migrate || true; fi
exec .venv/bin/python -m interp_assets.main "$@"
