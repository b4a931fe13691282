"""The code location loads, validates with Dagster's own CLI, and draws the study's assets with
their partitions; an invalid config fails the load before anything can run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from helpers import PROJECT_ROOT, asset_key, in_experiment, write_config

from interp_assets.definitions import build_definitions

EXPECTED_GRAPH = {
    # asset: (partitions, upstream assets)
    "language_model": (None, set()),
    "prompts": ("behaviour", set()),
    "baselines": ("behaviour", {"language_model", "prompts"}),
    "activations": ("layer", {"language_model", "prompts"}),
    "saes": ("layer", {"activations", "language_model"}),
    "feature_dashboards": ("layer", {"saes", "language_model"}),
    "attribution_graphs": ("behaviour", {"saes", "feature_dashboards", "prompts", "baselines", "language_model"}),
    "interventions": ("behaviour", {"attribution_graphs", "saes", "prompts", "language_model"}),
    "resource_plan": (None, set()),
}


def test_the_study_s_assets_with_partitions_and_dependencies() -> None:
    defs = build_definitions(PROJECT_ROOT / "configs" / "experiments" / "tiny.yaml")
    graph = defs.resolve_asset_graph()
    assert {key.path[-1] for key in graph.get_all_asset_keys()} == set(EXPECTED_GRAPH)
    for name, (partitions, upstream) in EXPECTED_GRAPH.items():
        node = graph.get(asset_key(name))
        keys = node.partitions_def.get_partition_keys() if node.partitions_def else None
        expected_keys = {None: None, "behaviour": ["ioi", "capitals"], "layer": ["1", "2", "3", "4"]}[partitions]
        assert keys == expected_keys, name
        assert {k.path[-1] for k in node.parent_keys} == upstream, name
        assert node.code_version, f"{name} has no code version: config edits could not make it stale"
    activations = graph.get(asset_key("activations"))
    assert activations.backfill_policy == dg.BackfillPolicy.single_run()
    checks = {key.name for key in graph.asset_check_keys}
    assert {"accuracy_above_chance", "corruption_flips_preference", "top_contexts_consistent"} <= checks
    dashboards = graph.get(asset_key("feature_dashboards"))
    assert dashboards.backfill_policy == dg.BackfillPolicy.single_run()  # a layer range is one run
    assert dashboards.automation_condition is not None  # relaunched like the SAEs when stale


def test_code_versions_follow_the_sections_each_asset_reads(tmp_path: Path) -> None:
    def versions(updates: dict) -> dict[str, str]:
        graph = build_definitions(write_config(tmp_path, updates)).resolve_asset_graph()
        return {key.path[-1]: graph.get(key).code_version for key in graph.get_all_asset_keys()}

    # resource_plan reads every section (each sizes some phase): it is re-planned by any edit.
    base = versions({})
    sae_edit = versions({"sae": {"l1_coefficient": 2.0}})
    assert {name for name in base if base[name] != sae_edit[name]} == {"saes", "resource_plan"}
    capture_edit = versions({"activations": {"last_n_tokens": 3}})
    # The dashboards read the corpus and hook point from the activations section.
    assert {name for name in base if base[name] != capture_edit[name]} == {"activations", "resource_plan",
                                                                            "feature_dashboards"}
    dashboards_edit = versions({"dashboards": {"top_k": 7}})
    assert {name for name in base if base[name] != dashboards_edit[name]} == {"feature_dashboards"}
    layers_edit = versions({"activations": {"layers": "1-5"}})
    # a new layer is a new, missing partition; the others stay fresh (the plan has one more job)
    assert {name for name in base if base[name] != layers_edit[name]} == {"resource_plan"}
    graph_edit = versions({"attribution": {"max_nodes_per_layer": 7}})
    assert {name for name in base if base[name] != graph_edit[name]} == {"attribution_graphs", "resource_plan"}
    experiments_edit = versions({"interventions": {"resample_samples": 7}})
    assert {name for name in base if base[name] != experiments_edit[name]} == {"interventions", "resource_plan"}


def test_editing_the_layer_list_adds_and_removes_layer_partitions(tmp_path: Path) -> None:
    def layer_keys(layers: str) -> dict[str, list[str]]:
        graph = build_definitions(write_config(tmp_path, {"activations": {"layers": layers}})).resolve_asset_graph()
        return {name: graph.get(asset_key(name)).partitions_def.get_partition_keys() for name in ("activations", "saes")}

    assert layer_keys("1-4") == {"activations": ["1", "2", "3", "4"], "saes": ["1", "2", "3", "4"]}
    assert layer_keys("2-5") == {"activations": ["2", "3", "4", "5"], "saes": ["2", "3", "4", "5"]}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    dagster = Path(sys.executable).with_name("dagster")
    return subprocess.run(
        [str(dagster), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_dagster_definitions_validate_passes() -> None:
    result = _cli("definitions", "validate", "-w", "workspace.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_invalid_config_fails_validation_naming_the_field(tmp_path: Path) -> None:
    bad = write_config(tmp_path, {"activations": {"hook_point": "mlp_act"}})
    result = _cli("definitions", "validate", "-w", "workspace.yaml", env={"INTERP_ASSETS_CONFIG": str(bad)})
    assert result.returncode != 0
    assert "activations.hook_point: unknown hook point 'mlp_act'" in result.stdout + result.stderr


@pytest.mark.parametrize("preset", ["qwen2.5-3b.yaml", "qwen3-4b.yaml"])
def test_pretrained_preset_loads_when_the_model_is_on_disk(tmp_path: Path, preset: str) -> None:
    import shutil

    import yaml
    from helpers import DATA, save_text_dataset

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(DATA / "qwen2.5-3b-instruct.config.json", model_dir / "config.json")
    data = yaml.safe_load((PROJECT_ROOT / "configs" / preset).read_text())
    data["model"]["path"] = str(model_dir)
    data["corpus"]["path"] = str(save_text_dataset(tmp_path / "corpus", ["Some real text.", "More of it."]))
    path = tmp_path / preset
    path.write_text(yaml.safe_dump(data))
    graph = build_definitions(path).resolve_asset_graph()
    layers = graph.get(asset_key("saes", data["experiment"]["name"])).partitions_def.get_partition_keys()
    assert layers == [str(layer) for layer in range(10, 25)]
