"""Lineage-driven rematerialization: what makes an asset stale, and what relaunches it.

Choice (documented in the README): config sections are NOT modelled as source assets. Each
asset's code version is its logic version + a hash of the config sections it reads
(``assets/_common.code_version``), and every materialization reports a content-hash data
version. Editing ``sae.*`` therefore changes only ``saes``'s code version; Dagster shows it and
everything downstream as Unsynced, and ``prompts``/``baselines``/``activations`` stay fresh.

The ``rematerialize_stale`` automation sensor (declarative automation, on by default, interval
in config) relaunches an asset's partitions when its code version changed (a config edit, after
the code location reloads), when an upstream's data version changed, or when a partition newly
appeared (a layer added to the list), and only once nothing upstream is missing, running, or
about to be launched on the same tick. That last rule is what makes a chain relaunch in
dependency order: after an ``sae.*`` edit the sensor launches ``saes``; once they are written
(new data version) it launches ``attribution_graphs``, and once the graphs are written,
``interventions`` — never a phase beside the upstream run whose output it is about to read.
Layer partitions are launched as one backfill, which the single-run backfill policy turns into
one run. Every run carries the study's tags (paper-id, researcher, model, commit-sha).
"""

from __future__ import annotations

import os

import dagster as dg

from interp_assets.config import ExperimentConfig
from interp_assets.provenance import git_commit

NOT_AUTOMATED = {"resource_plan"}
"""resource_plan: a view of the config for planning, materialized when someone wants to read it."""


def _due() -> dg.AutomationCondition:
    """New code (a config edit), new upstream bytes, or a new partition, not yet acted on."""
    return (
        dg.AutomationCondition.code_version_changed()
        | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
        | dg.AutomationCondition.newly_missing()
    ).since_last_handled()


def rematerialize_when_stale() -> dg.AutomationCondition:
    return (
        _due()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        # A dep requested on this same tick is a run that has not written yet: wait for its bytes.
        & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
        # ... and so is a dep that is itself due: will_be_requested does not see a layer backfill
        # from a behaviour-partitioned asset (graphs would start beside their dashboards and keep
        # the old labels), so wait for what is due upstream to be handled first.
        & ~dg.AutomationCondition.any_deps_match(_due())
        & ~dg.AutomationCondition.in_progress()
    ).with_label("rematerialize_when_stale")


def run_tags(config: ExperimentConfig) -> dict[str, str]:
    """The tags every run of this study carries, from the config and the checkout."""
    return {
        "paper-id": config.experiment.paper_id,
        "researcher": os.environ.get("INTERP_ASSETS_RESEARCHER", config.experiment.researcher),
        "model": config.model.name,
        "commit-sha": git_commit(),
        "experiment": config.experiment.name,
    }


def not_automated(config: ExperimentConfig) -> set[str]:
    """Assets the sensor leaves alone: every phase is automated except what the config makes
    unnecessary. With ``sae.data_source: stream`` nothing needs the stored
    ``activations`` (hundreds of GB per study at 3B widths): it can still be materialized by
    hand, but is never launched because it is missing. ``NOT_AUTOMATED`` is never launched."""
    return NOT_AUTOMATED | ({"activations"} if config.sae.data_source == "stream" else set())


def with_automation(assets: list[dg.AssetsDefinition], skip: set[str] = NOT_AUTOMATED) -> list[dg.AssetsDefinition]:
    condition = rematerialize_when_stale()

    def add_condition(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key.path[-1] in skip:  # the asset's name, under its experiment's prefix
            return spec
        return spec.replace_attributes(automation_condition=condition)

    return [asset.map_asset_specs(add_condition) for asset in assets]


def automation_sensor(config: ExperimentConfig) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "rematerialize_stale",
        target=dg.AssetSelection.all() - dg.AssetSelection.assets(*(config.asset_key(a) for a in not_automated(config))),
        default_status=(
            dg.DefaultSensorStatus.RUNNING if config.automation.enabled else dg.DefaultSensorStatus.STOPPED
        ),
        minimum_interval_seconds=config.automation.interval_seconds,
        run_tags=run_tags(config),
        description="Relaunches partitions whose code version changed (a config edit), whose upstream data "
        "changed, or that newly appeared; layer partitions as one backfill.",
    )
