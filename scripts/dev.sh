#!/usr/bin/env bash
# Start the Dagster webserver + daemon on the embedded instance in dagster_home/ (or $DAGSTER_HOME).
#   bash scripts/dev.sh                 # http://127.0.0.1:3000
#   PORT=3001 bash scripts/dev.sh &     # from a script: SIGTERM or SIGINT stops it cleanly
# `dagster dev` started in the background ignores SIGINT/SIGTERM unless their default action is
# restored, hence `env --default-signal=INT` (and exec, so the signal reaches it directly).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dagster ] || bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/dagster_home}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster_home/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
# A laptop's UI on 127.0.0.1: refused on a DAGSTER_HOME others can write, a warning where others log
# in (on a shared login node use scripts/ui.sh: the UI on a private Unix socket).
.venv/bin/python -m interp_assets.serve check-tcp --tcp "${PORT:-3000}"
# One code location per experiment of configs/experiments/ (or the one $INTERP_ASSETS_CONFIG names),
# listed afresh at every start; two configs with one experiment.name stop it here.
.venv/bin/python -m interp_assets.workspace --out "$DAGSTER_HOME/workspace.yaml"
exec env --default-signal=INT,TERM .venv/bin/dagster dev -w "$DAGSTER_HOME/workspace.yaml" -h "${HOST:-127.0.0.1}" -p "${PORT:-3000}"
