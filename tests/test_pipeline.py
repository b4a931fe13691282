"""The asset graph end to end on the tiny model, through Dagster with LocalCompute (Pipes
subprocess workers): what README command 1 does, asserted.

One module fixture builds and trains the tiny model (about a minute) and materializes phases 0–2
into a temporary storage root and Dagster instance; the tests then read what was recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import safetensors.torch
import torch
from helpers import asset_key, copy_study, in_experiment, run_log, seed_tiny_model, write_config
from neuronpedia_schema import neuronpedia_graph_problems

from interp_assets.config import ExperimentConfig, load_config
from interp_assets.definitions import build_definitions
from interp_assets.artifacts import (
    activations_relpath, baselines_relpath, sae_checkpoint_relpath, saes_relpath, tiny_model_relpath,
)
from resources.storage import ArtifactStore, sha256_file

pytestmark = pytest.mark.slow


@dataclass
class Study:
    config: ExperimentConfig
    config_path: Path
    defs: dg.Definitions
    instance: dg.DagsterInstance
    store: ArtifactStore
    results: dict[str, dg.ExecuteInProcessResult]

    def materialize(self, selection: list[str], **kwargs: object) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            list(self.defs.assets or []), selection=in_experiment(selection), instance=self.instance,
            resources=dict(self.defs.resources or {}), **kwargs,
        )

    def latest(self, asset: str, partition: str | None = None) -> dg.AssetMaterialization:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key(asset), asset_partitions=[partition] if partition else None),
            limit=1,
        ).records
        assert records, f"{asset} [{partition}] was never materialized"
        materialization = records[0].asset_materialization
        assert materialization is not None
        return materialization


def _range(config: ExperimentConfig, first: str | None = None, last: str | None = None) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first or config.layer_keys[0],
        "dagster/asset_partition_range_end": last or config.layer_keys[-1],
    }


def _direct_worker(task: str, *partitions: str):  # noqa: ANN202
    """(command prefix, env, run_to_end) for running one worker task outside Dagster, the way the
    kill -9 tests do: one torch thread, so reruns repeat the same floating-point order."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "interp_assets.worker", task,
               *(arg for key in partitions for arg in ("--partition", key)), "--config"]
    env = {**os.environ, "INTERP_ASSETS_TORCH_THREADS": "1"}

    def run_to_end(config_path: Path) -> tuple[dict, str]:
        done = subprocess.run([*command, str(config_path)], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr

    return command, env, run_to_end


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_model_storage: Path):  # noqa: ANN201
    root = tmp_path_factory.mktemp("study")
    # Fewer resampling draws than the default 100: the same experiments, a quarter of the time.
    config_path = write_config(root, {"interventions": {"resample_samples": 25}})
    config = load_config(config_path)
    seed_tiny_model(config.storage.location, tiny_model_storage)  # built once per session, reused here
    with dg.instance_for_test() as instance:
        study = Study(config, config_path, build_definitions(config_path), instance, ArtifactStore(config.storage.location), {})
        study.results["language_model"] = study.materialize(["language_model"])
        for behaviour in config.prompts.behaviours:
            study.results[f"baselines/{behaviour}"] = study.materialize(["prompts", "baselines"], partition_key=behaviour)
        study.results["activations"] = study.materialize(["activations"], tags=_range(config))
        study.results["saes"] = study.materialize(["saes"], tags=_range(config), raise_on_error=False)
        yield study


def test_tiny_model_is_built_into_storage_and_loads_like_a_hub_model(study: Study) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    materialization = study.latest("language_model")
    model_dir = study.store.local_dir(tiny_model_relpath(study.config))
    files = materialization.metadata["files"].value
    assert files["model.safetensors"] == sha256_file(model_dir / "model.safetensors")
    assert materialization.tags["dagster/data_version"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.num_hidden_layers == study.config.model.tiny_spec.num_layers
    assert len(tokenizer(" Paris", add_special_tokens=False)["input_ids"]) == 1
    # Provenance travels with every worker materialization.
    for key in ("provenance/git_commit", "provenance/packages", "provenance/model", "provenance/seed"):
        assert key in materialization.metadata


def test_language_model_asset_trains_then_reuses_the_same_build(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, {"model": {"tiny": {"train_steps": 3, "corpus_sentences": 3000}}})
    defs = build_definitions(config_path)
    with dg.instance_for_test() as instance:
        versions, logs = [], []
        for _ in range(2):
            result = dg.materialize(list(defs.assets), selection=in_experiment(["language_model"]), instance=instance,
                                    resources=dict(defs.resources))
            materialization = result.asset_materializations_for_node("language_model")[0]
            versions.append(materialization.tags["dagster/data_version"])
            logs.append(run_log(instance, result.run_id))
        assert "step 3/3" in logs[0] or "train/final_loss" in materialization.metadata
        assert materialization.metadata["train/n_parameters"].value > 0
        assert "already built for this spec: reusing it" in logs[1]
        assert versions[0] == versions[1]


def test_prompts_are_split_and_hashed(study: Study) -> None:
    preview = study.latest("prompts", "ioi").metadata["preview"]
    assert isinstance(preview, dg.TableMetadataValue)
    assert [c.name for c in preview.schema.columns] == ["split", "clean", "corrupted", "target", "foil"]
    assert len(preview.records) == 5
    for behaviour in study.config.prompts.behaviours:
        table = study.store.read_parquet(f"prompts/{behaviour}.parquet")
        assert table.height == 100
        assert table["split"].value_counts().sort("split")["count"].to_list() == [50, 50]
        assert table["id"].n_unique() == 100
        assert (table["clean"] != table["corrupted"]).all()
        materialization = study.latest("prompts", behaviour)
        data = study.store.read_bytes(f"prompts/{behaviour}.parquet")
        import hashlib

        assert materialization.tags["dagster/data_version"] == hashlib.sha256(data).hexdigest()


def test_baselines_show_both_behaviours_and_their_corruption(study: Study) -> None:
    figures = {}
    for behaviour in study.config.prompts.behaviours:
        result = study.results[f"baselines/{behaviour}"]
        assert result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(checks) == {"accuracy_above_chance", "corruption_flips_preference"}
        assert all(check.passed for check in checks.values()), checks
        md = study.latest("baselines", behaviour).metadata
        figures[behaviour] = {k: round(md[k].value, 3) for k in
                              ("accuracy_clean", "mean_logit_diff_clean", "mean_logit_diff_corrupted", "accuracy_corrupted")}
        assert md["accuracy_clean"].value >= 0.9
        assert md["mean_logit_diff_clean"].value > 2.0
        assert md["mean_logit_diff_corrupted"].value < -2.0
        assert md["logit_diff_histogram"].value.startswith("![")
        table = study.store.read_parquet(f"baselines/{behaviour}.parquet")
        assert table.height == 100
        assert set(table.columns) >= {"clean_logit_diff", "clean_p_target", "clean_correct", "corrupted_logit_diff"}
    print("baseline figures:", json.dumps(figures))


def test_all_layers_captured_in_one_run_with_per_layer_metadata(study: Study) -> None:
    result = study.results["activations"]
    assert result.success
    runs = study.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/asset_partition_range_start": "1"}))
    assert len([r for r in runs if r.step_keys_to_execute == ["activations"]]) == 1
    logs = [line for line in run_log(study.instance, result.run_id).splitlines() if "capture: batch" in line]
    assert logs, "the worker's progress lines reach the Dagster run"
    assert "4 layers in one pass" in logs[-1]
    width = study.config.model.tiny_spec.intermediate_size
    for key in study.config.layer_keys:
        md = study.latest("activations", key).metadata
        assert md["width"].value == width
        assert md["n_vectors_prompts"].value == 5 * 2 * 200  # last 5 tokens, clean + corrupted, 2x100 prompts
        assert md["n_vectors_corpus"].value > 10_000
        relpath = activations_relpath(study.config, int(key))
        manifest = study.store.read_json(f"{relpath}/manifest.json")
        assert md["manifest_sha256"].value == sha256_file(Path(study.store.url(f"{relpath}/manifest.json")))
        assert manifest["hook_name"] == f"blocks.{key}.mlp.hook_post"
        for source in manifest["sources"].values():
            for shard in source["shards"]:
                path = Path(study.store.url(f"{relpath}/{shard['file']}"))
                assert sha256_file(path) == shard["sha256"]
                tensors = safetensors.torch.load_file(path)
                assert tensors["activations"].shape == (shard["n_vectors"], width)
                assert str(tensors["activations"].dtype) == "torch.bfloat16"
        assert len(manifest["sources"]["corpus"]["shards"]) >= 2  # shard_max_vectors bounds each file


def test_rematerializing_gives_the_same_bytes_and_data_versions(study: Study) -> None:
    before = {k: study.latest("activations", k).metadata["manifest_sha256"].value for k in study.config.layer_keys}
    prompts_before = study.latest("prompts", "ioi").tags["dagster/data_version"]
    assert study.materialize(["prompts"], partition_key="ioi").success
    assert study.latest("prompts", "ioi").tags["dagster/data_version"] == prompts_before
    result = study.materialize(["activations"], tags=_range(study.config, "2", "3"))
    assert result.success
    after = {k: study.latest("activations", k).metadata["manifest_sha256"].value for k in ("2", "3")}
    assert after == {k: before[k] for k in ("2", "3")}


def _dashboards(study: Study) -> dg.ExecuteInProcessResult:
    """The feature dashboards of every layer, one run, materialized once per module."""
    if "feature_dashboards" not in study.results:
        study.results["feature_dashboards"] = study.materialize(["feature_dashboards"], tags=_range(study.config))
    return study.results["feature_dashboards"]


def test_feature_dashboards_for_all_layers_in_one_run(study: Study) -> None:
    from interp_assets.artifacts import dashboards_relpath
    from interp_assets.core.dashboard_export import NEURONPEDIA_FEATURE_FIELDS
    from interp_assets.core.dashboards import feature_label

    result = _dashboards(study)
    assert result.success
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == {"top_contexts_consistent": True}
    runs = study.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/asset_partition_range_end": "4"}))
    assert len([r for r in runs if r.step_keys_to_execute == ["feature_dashboards"]]) == 1
    section = study.config.dashboards
    for key in study.config.layer_keys:
        md = study.latest("feature_dashboards", key).metadata
        assert md["inconsistent_contexts"].value == 0
        assert md["n_windows"].value == section.n_texts and md["n_tokens"].value > section.n_texts
        table = md["features"].value.splitlines()
        assert table[0].startswith("| latent | label |") and len(table) == 2 + section.features_in_ui
        assert "**[" in table[2]  # the max-activating token is marked
        assert md["density_plot"].value.startswith("![")
        relpath = dashboards_relpath(study.config, int(key))
        latents = study.store.read_parquet(f"{relpath}/latents.parquet")
        contexts = study.store.read_parquet(f"{relpath}/contexts.parquet")
        d_sae = 4 * study.config.model.tiny_spec.intermediate_size
        assert latents.height == d_sae == md["d_sae"].value
        assert contexts.group_by("latent").len()["len"].max() == section.top_k
        document = study.store.read_json(f"{relpath}/features.json")
        assert (document["layer"], len(document["features"])) == (int(key), d_sae)
        assert all(set(feature) == set(NEURONPEDIA_FEATURE_FIELDS) for feature in document["features"])
        busiest = latents.sort("n_firing", descending=True).row(0, named=True)
        assert busiest["label"] == feature_label(busiest) != "dead"


def _circuits(study: Study, behaviour: str) -> dg.ExecuteInProcessResult:
    """Phases 4 and 5 for one behaviour, materialized once per module."""
    key = f"circuits/{behaviour}"
    if key not in study.results:
        study.results[key] = study.materialize(["attribution_graphs", "interventions"], partition_key=behaviour)
    return study.results[key]


@pytest.mark.parametrize("behaviour", ["ioi", "capitals"])
def test_attribution_graph_and_interventions_materialize_with_passing_checks(study: Study, behaviour: str) -> None:
    result = _circuits(study, behaviour)
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    denominator_check = checks.pop("faithfulness_denominator_large_enough")
    assert {name: c.passed for name, c in checks.items()} == {
        "graph_not_empty": True, "attribution_agrees_with_patching": True, "patching_controls_hold": True}

    graph = study.latest("attribution_graphs", behaviour).metadata
    assert graph["n_feature_nodes"].value > 0 and graph["n_edges"].value > 0
    # Tables are typed Dagster tables (sortable in the UI), not markdown strings.
    tables = {"top_nodes": (graph, ["node_id", "layer", "offset", "feature", "attribution", "exact_patch_effect"]),
              "best_patching_sites": (study.latest("interventions", behaviour).metadata,
                                      ["layer", "position", "recovery", "recovery_ci_low", "recovery_ci_high",
                                       "delta_ld", "delta_ld_ci_low", "delta_ld_ci_high"])}
    for name, (metadata, columns) in tables.items():
        assert isinstance(metadata[name], dg.TableMetadataValue), name
        assert [c.name for c in metadata[name].schema.columns] == columns
        assert metadata[name].records and set(metadata[name].records[0].data) == set(columns)
    assert {c.name: c.type for c in graph["top_nodes"].schema.columns}["attribution"] == "float"
    assert graph["sign_agreement_with_exact_patching"].value >= 0.7
    assert graph["graph"].value.startswith("![")  # the picture shows in the UI
    folder = f"attribution/{study.config.activations.hook_point}/{behaviour}"
    nodes = study.store.read_parquet(f"{folder}/nodes.parquet")
    assert nodes.height == graph["n_nodes"].value
    key_nodes = nodes.filter(pl.col("feature_type") != "embedding")
    assert key_nodes.group_by("layer").len()["len"].max() <= study.config.attribution.max_nodes_per_layer
    assert set(key_nodes["layer"]) <= set(study.config.attribution.key_layers)
    assert (key_nodes["attribution"].abs() >= study.config.attribution.node_threshold).all()
    assert nodes.filter(pl.col("feature_type") == "embedding").height == nodes["ctx_idx"].max() + 1
    edges = study.store.read_parquet(f"{folder}/edges.parquet")
    assert (edges["source_layer"] < edges["target_layer"]).all()
    logit_layer = study.config.model.tiny_spec.num_layers + 1
    assert set(edges["source"]) | set(edges.filter(pl.col("target_layer") != logit_layer)["target"]) <= set(nodes["node_id"])
    # Links skip layers (2 → 4) and every key layer reaches the logit directly.
    layer_pairs = set(edges.select("source_layer", "target_layer").unique().iter_rows())
    assert {(2, 4), (2, logit_layer), (3, logit_layer), (4, logit_layer)} <= layer_pairs
    # The UI shows the features the graph relies on most, each with its dashboard.
    from interp_assets.tasks.feature_dashboards import _cell

    most = nodes.filter(pl.col("feature_type") == "feature").sort("influence", descending=True).row(0, named=True)
    used = graph["features_used_most"].value
    latents = study.store.read_parquet(f"dashboards/{study.config.activations.hook_point}/layer_{most['layer']:03d}/latents.parquet")
    label = latents.filter(pl.col("latent") == most["feature"])["label"].item()
    section = used.split(f"**layer {most['layer']}**")[1].split("**layer")[0]
    row = next(line for line in section.splitlines() if line.startswith(f"| {most['feature']} |"))
    assert _cell(label) in row
    document = study.store.read_json(f"{folder}/graph.json")
    assert set(document) == {"metadata", "qParams", "nodes", "links"}
    assert neuronpedia_graph_problems(document) == []

    experiments = study.latest("interventions", behaviour).metadata
    table = study.store.read_parquet(f"interventions/{study.config.activations.hook_point}/{behaviour}/experiments.parquet")
    assert table.height == experiments["n_experiments"].value == table["experiment_id"].n_unique()
    assert set(table["family"]) == {"feature_ablation", "activation_patching", "resample_ablation"}
    section = study.config.interventions
    ablation = table.filter(pl.col("family") == "feature_ablation")
    assert ablation.height == 2 * min(section.ablation_groups, int(graph["n_feature_nodes"].value))
    patching = table.filter(pl.col("variant") == "raw")
    assert set(patching["layer"]) == set(study.config.activations.layers)
    assert patching["n_prompts"].max() <= section.patching_pairs
    controls = {r["variant"]: r["recovery"] for r in table.filter(pl.col("variant").str.starts_with("control")).iter_rows(named=True)}
    assert controls["control_nothing"] == pytest.approx(0.0, abs=1e-6)
    assert controls["control_everything"] == pytest.approx(1.0, abs=1e-4)
    # Every row carries its bootstrap CI around its estimate.
    assert (table["recovery_ci_low"] <= table["recovery"] + 1e-9).all() and (table["recovery"] <= table["recovery_ci_high"] + 1e-9).all()
    # Zero-ablating the most positively attributed group hurts the behaviour more than the weakest.
    zero = ablation.filter(pl.col("variant") == "zero").sort("group")
    assert zero["recovery"][0] < zero["recovery"][-1]
    curve = study.store.read_parquet(f"interventions/{study.config.activations.hook_point}/{behaviour}/faithfulness.parquet")
    assert curve.filter(pl.col("circuit_size") == 0)["faithfulness"][0] == pytest.approx(0.0, abs=1e-9)
    assert curve["faithfulness"][-1] > 0.5  # the whole graph carries most of the key layers' effect
    full = curve.row(-1, named=True)
    assert full["faithfulness_ci_low"] <= full["faithfulness"] <= full["faithfulness_ci_high"]
    # The attributed circuit beats random circuits of its size drawn from the active nodes.
    assert full["faithfulness"] > full["random_faithfulness_mean"] + full["random_faithfulness_std"]
    assert (table["delta_ld_ci_low"] <= table["delta_ld"] + 1e-9).all()
    minimum = study.config.interventions.min_faithfulness_denominator
    assert denominator_check.passed == (full["denominator_ci_low"] >= minimum)
    assert experiments["faithfulness_denominator"].value == pytest.approx(full["denominator"])
    if not denominator_check.passed:
        assert "min_faithfulness_denominator" in denominator_check.description
    assert not study.store.exists(f"checkpoints/interventions/{study.config.activations.hook_point}/{behaviour}/fingerprint.json")


def test_a_killed_intervention_run_resumes_without_recomputing(study: Study, tmp_path: Path) -> None:
    """kill -9 the worker after a few parts are written; the rerun computes only the rest, and
    the table equals an uninterrupted run's."""
    import signal
    import subprocess
    import time

    assert _circuits(study, "ioi").success
    updates = {"interventions": {"checkpoint_every": 4, "patching_positions": 6, "resample_samples": 10}}
    runs = {}
    for name in ("uninterrupted", "killed"):
        runs[name] = copy_study(study.config.storage.location, tmp_path / name, ("models", "prompts", "saes", "attribution"), updates)
    command, env, run_to_end = _direct_worker("interventions", "ioi")
    reference, _ = run_to_end(runs["uninterrupted"])
    total = reference["metadata"]["n_experiments"]

    parts = Path(load_config(runs["killed"]).storage.location) / "checkpoints" / "interventions" / "mlp_post" / "ioi"
    victim = subprocess.Popen([*command, str(runs["killed"])], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (parts / "part-00002.parquet").exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (parts / "part-00002.parquet").exists(), "no third part appeared before the worker ended"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    written = len(list(parts.glob("part-*.parquet")))

    resumed, log = run_to_end(runs["killed"])
    done_before = int(log.split(" experiments, ")[1].split(" already done")[0])
    assert done_before == 4 * written  # every finished part is reused, nothing in it recomputed
    assert resumed["metadata"]["n_computed"] == total - done_before
    assert resumed["metadata"]["n_resumed"] == done_before
    tables = [pl.read_parquet(Path(load_config(runs[name]).storage.location) / "interventions" / "mlp_post" / "ioi"
                              / "experiments.parquet") for name in ("uninterrupted", "killed")]
    assert tables[0].equals(tables[1])
    assert resumed["data_version"] == reference["data_version"]


def test_saes_for_all_layers_in_one_run_pass_their_checks(study: Study) -> None:
    from interp_assets.core.sae import load_sae

    result = study.results["saes"]
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"explained_variance_above_threshold", "dead_fraction_below_bound"}
    figures = {}
    names = ("explained_variance", "random_sae/explained_variance", "l0", "random_sae/l0", "dead_fraction",
             "dense_fraction", "kl_with_sae", "kl_zero_ablation", "ce_loss_recovered", "ce_denominator_zero_ablation")
    for key in study.config.layer_keys:
        md = study.latest("saes", key).metadata
        figures[key] = {name: round(float(md[name].value), 4) for name in names}
        assert md["training_curve"].value.startswith("![")
        assert "random SAE (chance)" in md["held_out_vs_random_sae"].value
        # Every held-out token of the budget, every one judged.
        corpus = study.config.corpus
        assert corpus.eval_tokens - corpus.seq_len < md["n_eval_tokens"].value <= corpus.eval_tokens
        assert sum(md["l0_histogram"].value["counts"]) == md["n_eval_tokens"].value
        # A CE-recovered over a denominator too small to mean anything says so beside it.
        small = figures[key]["ce_denominator_zero_ablation"] < study.config.sae.min_ce_denominator
        assert ("ce_warning" in md) == small, (key, figures[key])
    print("SAE held-out figures by layer:", json.dumps(figures))
    # The spec's bar: R² ≥ 0.7 on held-out text within the tiny config's step budget, far above
    # a random SAE of the same shape, and the SAE disturbs the model far less than ablating.
    for f in figures.values():
        assert f["explained_variance"] >= 0.7, figures
        assert f["random_sae/explained_variance"] < f["explained_variance"] - 0.5, figures
        assert f["kl_with_sae"] < f["kl_zero_ablation"], figures
    assert all(check.passed for check in checks.values()), checks
    assert result.success
    runs = study.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/asset_partition_range_end": "4"}))
    assert len([r for r in runs if r.step_keys_to_execute == ["saes"]]) == 1
    # The published folder: SAELens files + our record, and it loads with our loader.
    layer = int(study.config.layer_keys[1])
    folder = Path(study.store.url(saes_relpath(study.config, layer)))
    assert {p.name for p in folder.iterdir()} == {
        "cfg.json", "sae_weights.safetensors", "training.json", "training_curve.png", "_COMPLETE"
    }
    sae = load_sae(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["metadata"]["hook_name"] == f"blocks.{layer}.mlp.hook_post"
    assert cfg["d_in"] == study.config.model.tiny_spec.intermediate_size and cfg["d_sae"] == 4 * cfg["d_in"]
    manifest = study.store.read_json(f"{activations_relpath(study.config, layer)}/manifest.json")
    shard = safetensors.torch.load_file(Path(study.store.url(f"{activations_relpath(study.config, layer)}/"
                                                          f"{manifest['sources']['prompts']['shards'][0]['file']}")))
    x = shard["activations"].float()
    x_hat = sae.decode(sae.encode(x))
    torch_r2 = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert float(torch_r2) > 0.5  # the behaviour prompts' activations, never trained on, reconstruct too
    assert not study.store.exists(sae_checkpoint_relpath(study.config, layer))  # deleted once published

    # The stored corpus activations are exactly the training windows; the summary's R² is the
    # held-out windows' (recomputed here by hand from the model, the SAE and the reader).
    from interp_assets.core.modeling import load_model_and_tokenizer
    from interp_assets.core.sae_eval import held_out_activations
    from interp_assets.tasks.common import corpus_windows

    model, tokenizer = load_model_and_tokenizer(Path(study.store.url(tiny_model_relpath(study.config))), "float32", "cpu")
    stored = torch.cat([safetensors.torch.load_file(Path(study.store.url(
        f"{activations_relpath(study.config, layer)}/{record['file']}")))["token_ids"]
        for record in manifest["sources"]["corpus"]["shards"]])
    train = corpus_windows(study.config, tokenizer, held_out=False)
    assert torch.equal(stored, train[train >= 0])  # one sentence per window, padding never stored
    held_windows = corpus_windows(study.config, tokenizer, held_out=True)
    held = held_out_activations(model, held_windows, layer, "mlp_post",
                                batch_size=64, skip_first=0, dtype=torch.bfloat16).float()
    assert held.shape[0] == int((held_windows >= 0).sum())
    x_hat = sae.decode(sae.encode(held))
    r2 = 1 - float(((held - x_hat) ** 2).sum() / ((held - held.mean(0)) ** 2).sum())
    assert abs(r2 - float(study.latest("saes", str(layer)).metadata["explained_variance"].value)) < 1e-3


def test_a_killed_training_resumes_to_bit_identical_weights(study: Study, tmp_path: Path) -> None:
    """kill -9 a worker mid-training; the rerun resumes from its checkpoint and ends with the
    same weights as an uninterrupted run."""
    import signal
    import subprocess
    import time

    layer = study.config.layer_keys[0]
    updates = {"sae": {"steps": 300, "checkpoint_every": 60, "log_every": 20, "lr_warmup_steps": 20, "lr_decay_steps": 60}}
    runs = {}
    for name in ("uninterrupted", "killed"):
        runs[name] = copy_study(study.config.storage.location, tmp_path / name, ("models", "activations"), updates)
    command, env, run_to_end = _direct_worker("saes", layer)
    reference, _ = run_to_end(runs["uninterrupted"])

    killed_config = load_config(runs["killed"])
    checkpoint = Path(ArtifactStore(killed_config.storage.location).url(sae_checkpoint_relpath(killed_config, int(layer))))
    victim = subprocess.Popen([*command, str(runs["killed"])], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint appeared before the worker ended"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL

    resumed, log = run_to_end(runs["killed"])
    assert "resumed from the checkpoint at step" in log
    step = int(log.split("resumed from the checkpoint at step ")[1].split("/")[0])
    assert 60 <= step < 300
    weights = {name: result["partitions"][layer]["weights_sha256"] for name, result in
               (("uninterrupted", reference), ("resumed", resumed))}
    assert weights["uninterrupted"] == weights["resumed"], f"resumed at step {step}: weights differ"


def test_a_killed_capture_resumes_and_publishes_the_same_shards(study: Study, tmp_path: Path) -> None:
    """kill -9 the worker at a random point of activation capture: no layer is readable until the
    rerun, which resumes from the last checkpoint and publishes byte-identical manifests whose
    shards all match their recorded sha256."""
    import random
    import signal
    import subprocess
    import time

    from interp_assets.artifacts import capture_checkpoint_relpath

    layers = ["1", "3"]
    updates = {"activations": {"shard_max_vectors": 2048, "batch_size": 32}}
    runs = {}
    for name in ("uninterrupted", "killed"):
        runs[name] = copy_study(study.config.storage.location, tmp_path / name, ("models", "prompts"), updates)
    command, env, run_to_end = _direct_worker("activations", *layers)
    reference, _ = run_to_end(runs["uninterrupted"])

    config = load_config(runs["killed"])
    store = ArtifactStore(config.storage.location)
    checkpoint = Path(store.url(capture_checkpoint_relpath(config, [int(key) for key in layers])))
    kill_after = random.Random().randint(2, 30)  # batches into the corpus; a different point each run
    victim = subprocess.Popen([*command, str(runs["killed"])], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while victim.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists() and json.loads(checkpoint.read_text())["progress"]["batch"] >= kill_after:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the capture ended before it could be killed"
    for key in layers:  # a killed capture leaves no layer that reads as valid
        assert not store.exists(f"{activations_relpath(config, int(key))}/manifest.json")

    resumed, log = run_to_end(runs["killed"])
    resumed_at = int(log.split("capture: resuming at batch ")[1].split("/")[0])
    assert resumed_at >= kill_after, log[-2000:]
    assert resumed["data_version"] == reference["data_version"]
    assert not checkpoint.exists()
    for key in layers:
        relpath = activations_relpath(config, int(key))
        reference_manifest = (Path(load_config(runs["uninterrupted"]).storage.location) / relpath / "manifest.json").read_bytes()
        assert store.read_bytes(f"{relpath}/manifest.json") == reference_manifest
        manifest = json.loads(reference_manifest)
        for records in manifest["sources"].values():
            for shard in records["shards"]:
                assert sha256_file(store.url(f"{relpath}/{shard['file']}")) == shard["sha256"]
        assert set(store.list(relpath)) == {s["file"] for r in manifest["sources"].values() for s in r["shards"]} | {"manifest.json"}


def test_a_full_activation_tier_fails_clearly_and_resumes_once_there_is_room(study: Study, tmp_path: Path) -> None:
    """The hot tier (activations + checkpoints) on a small tmpfs fills up mid-capture: the run
    fails naming the full root, no layer reads as valid, the bucket tier is untouched; with more
    room the rerun resumes from the checkpoint and publishes the same manifests as a roomy run."""
    import shutil

    from helpers import grow_filesystem, small_filesystem

    # 36 MiB: room for two rounds of 8.6 MB shards (layers 1 and 2), so a checkpoint exists when it fills.
    with small_filesystem(tmp_path / "scratch", "36m") as scratch:
        config_path = write_config(tmp_path, {"storage": {"root": str(tmp_path / "bucket"), "tiers": {
            "activations": str(scratch), "checkpoints": str(scratch)}}})
        config = load_config(config_path)
        # The experiment's folders (its prefix) under the bucket and under the hot tier.
        root, hot = Path(config.storage.location), Path(config.storage.tier_locations()["activations"])
        for folder in ("models", "prompts"):
            shutil.copytree(study.store.url(folder), root / folder)
        defs = build_definitions(config_path)
        before = {p.relative_to(root): sha256_file(p) for p in root.rglob("*") if p.is_file()}
        layers = ["1", "2"]
        with dg.instance_for_test() as instance:
            def materialize() -> dg.ExecuteInProcessResult:
                return dg.materialize(list(defs.assets), selection=in_experiment(["activations"]), instance=instance,
                                      resources=dict(defs.resources), raise_on_error=False,
                                      tags=_range(config, layers[0], layers[-1]))

            failed = materialize()
            assert not failed.success
            # The worker's exception, as the UI shows it on the run's event log.
            errors = [entry.dagster_event.engine_event_data.error.message for entry in instance.all_logs(failed.run_id)
                      if entry.dagster_event and entry.dagster_event.is_engine_event
                      and entry.dagster_event.engine_event_data.error]
            assert any(f"no space left on the storage root {hot}" in error for error in errors), errors
            for key in layers:
                assert not (hot / activations_relpath(config, int(key)) / "manifest.json").exists()
            assert not list(scratch.rglob("*.tmp-*"))
            assert {p.relative_to(root): sha256_file(p) for p in root.rglob("*") if p.is_file()} == before

            grow_filesystem(scratch, "200m")
            resumed = materialize()
            assert resumed.success
            assert "capture: resuming at batch " in run_log(instance, resumed.run_id)
            for key in layers:
                relpath = activations_relpath(config, int(key))
                manifest = (hot / relpath / "manifest.json").read_bytes()
                assert manifest == study.store.read_bytes(f"{relpath}/manifest.json")  # as the roomy study's
                recorded = instance.fetch_materializations(dg.AssetRecordsFilter(
                    asset_key=asset_key("activations"), asset_partitions=[key]), limit=1).records[0]
                assert recorded.asset_materialization.metadata["manifest_sha256"].value == sha256_file(
                    hot / relpath / "manifest.json")
            assert not list(hot.glob("checkpoints/activations/*/*.json"))


def test_prompts_table_is_a_polars_frame_of_strings(study: Study) -> None:
    table = study.store.read_parquet("prompts/capitals.parquet")
    assert isinstance(table, pl.DataFrame)
    assert table.schema["target"] == pl.String
    assert table["target"].str.starts_with(" ").all()


RECORDED_DATA_VERSIONS = Path(__file__).resolve().parent / "data" / "tiny_study_data_versions.json"


def test_every_partition_keeps_the_data_version_recorded_on_main(study: Study) -> None:
    """A refactor changes no byte: every asset partition of the tiny study has the data version it
    had when the file was recorded (``INTERP_ASSETS_RECORD_DATA_VERSIONS=1`` rewrites it, on
    purpose, when an output is meant to change)."""
    import os

    for behaviour in study.config.prompts.behaviours:
        assert _circuits(study, behaviour).success
    assert _dashboards(study).success
    partitions = {
        "language_model": [None],
        "prompts": list(study.config.prompts.behaviours),
        "baselines": list(study.config.prompts.behaviours),
        "activations": list(study.config.layer_keys),
        "saes": list(study.config.layer_keys),
        "feature_dashboards": list(study.config.layer_keys),
        "attribution_graphs": list(study.config.prompts.behaviours),
        "interventions": list(study.config.prompts.behaviours),
    }
    # The first materialization of each partition, the study's own: a later test rematerializes
    # layers 2-3 as their own range, whose shared data version is that range's.
    versions = {
        asset: {str(key): study.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key(asset), asset_partitions=[key] if key else None),
            limit=1, ascending=True).records[0].asset_materialization.tags["dagster/data_version"] for key in keys}
        for asset, keys in partitions.items()
    }
    if os.environ.get("INTERP_ASSETS_RECORD_DATA_VERSIONS") == "1":
        RECORDED_DATA_VERSIONS.write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    recorded = json.loads(RECORDED_DATA_VERSIONS.read_text())
    assert versions == recorded


def test_the_example_notebook_runs_in_a_real_kernel_against_the_study(study: Study, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/study.ipynb executed by nbclient in an ipykernel, opening this module's study
    through $INTERP_ASSETS_CONFIG: every cell runs, and what it reads is what was materialized."""
    import importlib.util
    import os

    import nbclient
    import nbformat

    for behaviour in study.config.prompts.behaviours:
        assert _circuits(study, behaviour).success
    notebook = nbformat.read(Path(__file__).resolve().parent.parent / "examples" / "study.ipynb", as_version=4)
    monkeypatch.setenv("INTERP_ASSETS_CONFIG", str(study.config_path))
    # The kernel imports this checkout (PYTHONPATH), as the test process does.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                      os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(study.config_path.parent)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    summary = json.loads(printed.strip().splitlines()[-1])
    layer = str(summary["layer"])
    assert summary["explained_variance"] == pytest.approx(study.latest("saes", layer).metadata["explained_variance"].value)
    graph = study.latest("attribution_graphs", "ioi").metadata
    assert (summary["n_nodes"], summary["n_edges"]) == (graph["n_nodes"].value, graph["n_edges"].value)
    assert summary["n_experiments"] == study.latest("interventions", "ioi").metadata["n_experiments"].value
    assert summary["n_baselines"] == sum(study.store.read_parquet(baselines_relpath(b)).height
                                         for b in study.config.prompts.behaviours)
    # A SAELens SAE where sae_lens is installed, the project's own class where it is not.
    expected = "sae_lens" if importlib.util.find_spec("sae_lens") else "interp_assets.core.sae SparseAutoencoder"
    assert expected in printed, printed
    # The tables and the graph picture came back as rich outputs (HTML frames, a PNG).
    assert any("text/html" in o.get("data", {}) for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
