"""What the ``rematerialize_stale`` sensor launches, tick by tick, after a config edit.

Every phase is automated, and a chain relaunches in dependency order. The sensor's own
evaluation (``dg.evaluate_automation_conditions``, the machinery the sensor runs on its tick)
runs against a real Dagster instance whose event log holds a materialization, with a content
data version, of every asset partition of the tiny study; between ticks, the runs the sensor
asked for are recorded as finished by materializations with new data versions, as the workers
report them (a run still under way is Dagster's own ``any_deps_in_progress``, not modelled here). test_ui shows the same sensor launching real runs in ``dagster dev``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pytest
from helpers import asset_key, in_experiment, write_config

from interp_assets.config import load_config
from interp_assets.definitions import build_definitions

ASSETS = ("language_model", "prompts", "baselines", "activations", "saes", "feature_dashboards", "attribution_graphs",
          "interventions")


class Sensor:
    """The study's definitions (rebuilt from its config, as a code-location reload does), one
    instance, and the cursor the sensor keeps between ticks."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.updates: dict = {}
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor = None
        self.versions = 0
        self.reload()

    def reload(self, updates: dict | None = None) -> None:
        self.updates = updates or {}
        path = write_config(self.tmp_path, self.updates, name=f"config-{len(list(self.tmp_path.glob('*.yaml')))}.yaml")
        self.config = load_config(path)
        self.defs = build_definitions(path)

    def partitions(self, asset: str) -> list[str | None]:
        partitions_def = self.defs.resolve_asset_graph().get(asset_key(asset)).partitions_def
        return list(partitions_def.get_partition_keys()) if partitions_def else [None]

    def finish(self, asset: str, partitions: set[str | None] | None = None) -> None:
        """The run of ``asset`` ends and writes new bytes: a materialization with a new data version."""
        for key in partitions if partitions is not None else self.partitions(asset):
            self.versions += 1
            version = hashlib.sha256(f"{asset}/{key}/{self.versions}".encode()).hexdigest()
            self.instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key(asset), partition=key, tags={"dagster/data_version": version}))

    def tick(self) -> dict[str, set[str | None]]:
        """One sensor tick: what it requests, asset → partitions."""
        result = dg.evaluate_automation_conditions(self.defs, self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        requested = {key.path[-1]: set(result.get_requested_partitions(key))
                     for key in self.defs.resolve_asset_graph().get_all_asset_keys()}
        return {asset: partitions for asset, partitions in requested.items() if partitions}


@pytest.fixture
def sensor(tmp_path: Path) -> Sensor:
    """A study whose every asset partition is materialized and which the sensor has seen once."""
    sensor = Sensor(tmp_path)
    for asset in ASSETS:
        sensor.finish(asset)
    assert sensor.tick() == {}  # first tick: it learns the code versions, and nothing is stale
    assert sensor.tick() == {}
    return sensor


def test_every_phase_is_automated_and_targeted_by_the_sensor(tmp_path: Path) -> None:
    defs = build_definitions(write_config(tmp_path))
    graph = defs.resolve_asset_graph()
    targeted = defs.resolve_sensor_def("rematerialize_stale").asset_selection.resolve(graph)
    assert {key.path[-1] for key in targeted} == set(ASSETS)
    assert all(graph.get(asset_key(asset)).automation_condition is not None for asset in ASSETS)


def test_an_attribution_edit_relaunches_graphs_then_interventions_and_nothing_else(sensor: Sensor) -> None:
    behaviours = set(sensor.config.prompts.behaviours)
    sensor.reload({"attribution": {"node_threshold": sensor.config.attribution.node_threshold * 2}})
    assert sensor.tick() == {"attribution_graphs": behaviours}
    # Until the graphs' new bytes exist, interventions have nothing new to read (and the graphs
    # are not requested twice).
    assert sensor.tick() == {}
    sensor.finish("attribution_graphs")
    assert sensor.tick() == {"interventions": behaviours}
    sensor.finish("interventions")
    assert sensor.tick() == {}
    assert sensor.tick() == {}


def test_an_sae_edit_relaunches_saes_then_dashboards_then_graphs_then_interventions(sensor: Sensor) -> None:
    behaviours = set(sensor.config.prompts.behaviours)
    sensor.reload({"sae": {"l1_coefficient": sensor.config.sae.l1_coefficient * 2}})
    assert sensor.tick() == {"saes": set(sensor.config.layer_keys)}
    assert sensor.tick() == {}
    sensor.finish("saes")
    # The graphs read every layer's SAE and its dashboard (node labels); the dashboards go first,
    # and the graphs wait for their new bytes.
    assert sensor.tick() == {"feature_dashboards": set(sensor.config.layer_keys)}
    sensor.finish("feature_dashboards")
    # Interventions read the graphs, so they are not launched beside them on this tick even though
    # the SAEs they also read are already new (once the graphs' run is under way, Dagster's
    # any_deps_in_progress holds them until it ends).
    assert sensor.tick() == {"attribution_graphs": behaviours}
    sensor.finish("attribution_graphs")
    assert sensor.tick() == {"interventions": behaviours}
    sensor.finish("interventions")
    assert sensor.tick() == {}


def test_one_relaunched_layer_relaunches_every_graph(sensor: Sensor) -> None:
    """A graph reads all the layers' SAEs: new bytes for one layer make that layer's dashboard and
    then every behaviour's graph stale."""
    layer = sensor.config.layer_keys[0]
    sensor.finish("saes", {layer})
    assert sensor.tick() == {"feature_dashboards": {layer}}
    sensor.finish("feature_dashboards", {layer})
    assert sensor.tick() == {"attribution_graphs": set(sensor.config.prompts.behaviours)}


def test_an_interventions_edit_relaunches_only_interventions(sensor: Sensor) -> None:
    sensor.reload({"interventions": {"bootstrap_samples": sensor.config.interventions.bootstrap_samples + 1}})
    assert sensor.tick() == {"interventions": set(sensor.config.prompts.behaviours)}
    sensor.finish("interventions")
    assert sensor.tick() == {}
