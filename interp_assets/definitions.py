"""The code location: every phase's assets and checks over one experiment config.

The config comes from $INTERP_ASSETS_CONFIG (default configs/tiny.yaml) and is validated here,
when the definitions load: an invalid config fails the code location with an error naming the
field, before anything can be launched.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

from interp_assets.assets import PHASES
from interp_assets.automation import automation_sensor, not_automated, with_automation
from interp_assets.config import load_config
from interp_assets.dead_runs import release_dead_runs_sensor
from resources.backend import compute_from_env


# single_run() backfill policies are what make a layer backfill one run; the beta notice is noise.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build_definitions(config_path: str | Path | None = None) -> dg.Definitions:
    config = load_config(config_path)
    assets = with_automation([definition for phase in PHASES for definition in phase.build(config)], not_automated(config))
    return dg.Definitions(assets=assets, sensors=[automation_sensor(config), release_dead_runs_sensor()],
                          resources={"compute": compute_from_env()})


defs = build_definitions()
