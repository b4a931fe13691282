#!/usr/bin/env bash
# README command 1: set up, then run the main job (the whole study on the tiny model, local
# compute, the embedded SQLite instance in dagster_home/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="$PWD/dagster_home"
exec .venv/bin/python -m interp_assets.main "$@"
