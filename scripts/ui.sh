#!/usr/bin/env bash
# The UI and the daemon on a shared login node (README "Security"): the webserver on a Unix socket
# in a directory only you can enter (default ~/.interp-assets/ui.sock), the daemon beside it.
#   bash scripts/ui.sh                         # then, on your workstation:
#   ssh -N -L 3000:$HOME/.interp-assets/ui.sock <login node>    # and open http://localhost:3000
#   bash scripts/ui.sh --tcp 3000              # a laptop: 127.0.0.1:3000 (warns if others log in here)
# Refuses a DAGSTER_HOME or socket directory that other accounts can write to or enter.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dagster ] || bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/dagster_home}"
exec env --default-signal=INT,TERM .venv/bin/python -m interp_assets.serve all "$@"
