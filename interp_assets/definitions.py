"""One experiment's code location: every phase's assets and checks over one config.

``build_definitions(path)`` is what each location of the workspace loads (interp_assets/workspace.py:
one per config of configs/experiments/); this module's ``defs`` is the one experiment named by
$INTERP_ASSETS_CONFIG (default configs/experiments/tiny.yaml), for `dagster dev -m` and the main job.
The config is validated when the definitions load: an invalid config fails its own code location
with an error naming the field, before anything can be launched.

Every asset key is in the experiment's namespace (``<experiment.name>/<asset>``): the assets are
built with plain names, as each phase reads its dependencies, and then moved under the prefix,
dependencies and checks with them, so two experiments' keys, histories and staleness never meet.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

from interp_assets.assets import PHASES
from interp_assets.automation import automation_sensor, not_automated, with_automation
from interp_assets.config import ExperimentConfig, load_config
from interp_assets.dead_runs import release_dead_runs_sensor
from resources.backend import compute_from_env


# single_run() backfill policies are what make a layer backfill one run; the beta notice is noise.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def in_namespace(assets: list[dg.AssetsDefinition], config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    """The phases' assets with every key (their own, their deps', their checks') under the
    experiment's prefix."""
    keys = {key for asset in assets for key in asset.keys}
    replacements = {key: config.asset_key(key.to_user_string()) for key in keys}
    return [asset.with_attributes(asset_key_replacements=replacements) for asset in assets]


def build_definitions(config_path: str | Path | None = None) -> dg.Definitions:
    config = load_config(config_path)
    assets = in_namespace([definition for phase in PHASES for definition in phase.build(config)], config)
    return dg.Definitions(assets=with_automation(assets, not_automated(config)),
                          sensors=[automation_sensor(config), release_dead_runs_sensor()],
                          resources={"compute": compute_from_env()})


defs = build_definitions()
