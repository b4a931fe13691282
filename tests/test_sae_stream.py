"""``sae.data_source: stream``: SAEs trained from the model's own forward passes, no stored
activations. The config field and its code version, the asset graph without the ``activations``
dependency, a group of layers trained in lockstep (the same weights as layer by layer), and a
worker killed after SLURM's USR1 checkpoint that resumes to bit-identical weights."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch
from helpers import asset_key, in_experiment, seed_tiny_model, tiny_config_dict, write_config

from interp_assets.config import ConfigError, load_config, parse_config
from interp_assets.definitions import build_definitions
from interp_assets.artifacts import activations_relpath, sae_checkpoint_relpath, saes_relpath
from resources.storage import ArtifactStore

STREAM = {"data_source": "stream"}
# A short budget: the same maths as the tiny config's 1000 steps, a fifth of the time.
SHORT = {**STREAM, "steps": 200, "log_every": 20, "lr_warmup_steps": 20, "lr_decay_steps": 60,
         "l1_warmup_steps": 60, "checkpoint_every": 10_000}


def _config(updates: dict) -> dict:
    data = tiny_config_dict()
    data["sae"] = {**data["sae"], **updates}
    return data


def test_data_source_is_validated_and_part_of_the_sae_code_version() -> None:
    cached, stream = parse_config(_config({})), parse_config(_config(STREAM))
    assert cached.sae.data_source == "cached" and stream.sae.data_source == "stream"
    assert cached.section_hash("sae") != stream.section_hash("sae")
    grouped = parse_config(_config({**STREAM, "stream_layers_per_task": 2}))
    assert grouped.section_hash("sae") == stream.section_hash("sae")  # scheduling, not content
    with pytest.raises(ConfigError, match=r"sae.data_source"):
        parse_config(_config({"data_source": "disk"}))
    with pytest.raises(ConfigError, match=r"stream_layers_per_task is only for data_source: stream"):
        parse_config(_config({"stream_layers_per_task": 2}))
    with pytest.raises(ConfigError, match=r"sae.stream_layers_per_task"):
        parse_config(_config({**STREAM, "stream_layers_per_task": 0}))


def test_stream_mode_drops_the_activations_dependency_and_reads_the_stream_sections(tmp_path: Path) -> None:
    def graph(updates: dict) -> tuple[set[str], dict[str, str]]:
        defs = build_definitions(write_config(tmp_path, updates, name=f"c{len(list(tmp_path.iterdir()))}.yaml"))
        asset_graph = defs.resolve_asset_graph()
        node = asset_graph.get(asset_key("saes"))
        versions = {k.path[-1]: asset_graph.get(k).code_version for k in asset_graph.get_all_asset_keys()}
        return {k.path[-1] for k in node.parent_keys}, versions

    cached_parents, _ = graph({})
    assert cached_parents == {"activations", "language_model"}
    parents, base = graph({"sae": STREAM})
    assert parents == {"language_model"}
    # In stream mode the corpus settings reach the SAEs through their own code version.
    _, corpus_edit = graph({"sae": STREAM, "corpus": {"generated_documents": 12000}})
    assert {name for name in base if base[name] != corpus_edit[name]} >= {"activations", "saes"}
    _, grouped = graph({"sae": {**STREAM, "stream_layers_per_task": 1}})
    assert grouped == base


def test_stream_mode_never_launches_activations_automatically(tmp_path: Path) -> None:
    """Missing activations would be materialized by the sensor (newly missing); in stream mode
    nothing needs them, so the sensor leaves them alone while saes stays automated."""
    def automated(updates: dict) -> dict[str, bool]:
        defs = build_definitions(write_config(tmp_path, updates, name=f"a{len(list(tmp_path.iterdir()))}.yaml"))
        graph = defs.resolve_asset_graph()
        sensor = defs.resolve_sensor_def("rematerialize_stale")
        targeted = sensor.asset_selection.resolve(graph)
        return {name: graph.get(asset_key(name)).automation_condition is not None and asset_key(name) in targeted
                for name in ("activations", "saes")}

    assert automated({}) == {"activations": True, "saes": True}
    assert automated({"sae": STREAM}) == {"activations": False, "saes": True}


def _stream_study(tmp_path: Path, tiny_model_storage: Path, sae: dict, name: str) -> Path:
    root = tmp_path / name
    root.mkdir()
    path = write_config(root, {"sae": sae, "activations": {"layers": "1-2"}, "attribution": {"key_layers": [1, 2]}})
    seed_tiny_model(load_config(path).storage.location, tiny_model_storage)
    return path


@pytest.mark.slow
def test_saes_materialize_from_the_stream_without_activations(tmp_path: Path, tiny_model_storage: Path) -> None:
    """Through Dagster with LocalCompute: both layers in one run, per-layer metadata, passing
    checks, and nothing under activations/ ever written."""
    config_path = _stream_study(tmp_path, tiny_model_storage, {**STREAM, "steps": 400, "lr_decay_steps": 100,
                                                                "l1_warmup_steps": 100, "checkpoint_every": 150},
                                "dagster")
    config = load_config(config_path)
    defs = build_definitions(config_path)
    with dg.instance_for_test() as instance:
        def materialize(selection: list[str], **kwargs: object) -> dg.ExecuteInProcessResult:
            return dg.materialize(list(defs.assets or []), selection=in_experiment(selection), instance=instance,
                                  resources=dict(defs.resources or {}), **kwargs)

        assert materialize(["language_model"]).success
        result = materialize(["saes"], tags={"dagster/asset_partition_range_start": "1",
                                             "dagster/asset_partition_range_end": "2"})
        assert result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(checks) == {"explained_variance_above_threshold", "dead_fraction_below_bound"}
        assert all(check.passed for check in checks.values()), checks
        figures = {}
        for key in ("1", "2"):
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key("saes"), asset_partitions=[key]), limit=1).records[0]
            md = record.asset_materialization.metadata
            assert md["data_source"].value == "stream"
            figures[key] = {n: round(float(md[n].value), 3) for n in ("explained_variance", "dead_fraction",
                                                                       "ce_loss_recovered")}
            assert figures[key]["explained_variance"] >= config.sae.min_explained_variance, figures
            assert md["training_curve"].value.startswith("![")
        print("stream SAE figures by layer:", json.dumps(figures))
        assert not instance.fetch_materializations(asset_key("activations"), limit=1).records
    store = ArtifactStore(config.storage.location)
    assert not store.exists("activations")
    for layer in (1, 2):
        assert store.is_complete_dir(saes_relpath(config, layer))
        assert not store.exists(sae_checkpoint_relpath(config, layer))
        assert not store.exists(activations_relpath(config, layer))


def _worker(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "interp_assets.worker", "saes", "--partition", "1", "--partition", "2",
            "--config", str(config_path)]


_ENV = {**os.environ, "INTERP_ASSETS_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _run_to_end(config_path: Path) -> tuple[dict, str]:
    done = subprocess.run(_worker(config_path), capture_output=True, text=True, env=_ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.slow
def test_a_group_killed_after_its_usr1_checkpoint_resumes_to_the_weights_of_layer_by_layer_training(
    tmp_path: Path, tiny_model_storage: Path
) -> None:
    """Reference: layers 1 and 2 trained one group each (two streams). Then both in one group:
    USR1 mid-training makes every layer checkpoint at the same step and stream position, SIGKILL,
    and the rerun resumes the group there (recomputing only the current chunk's forward passes).
    Both layers must end with the reference's weights: grouping and resuming change nothing."""
    reference_path = _stream_study(tmp_path, tiny_model_storage, {**SHORT, "stream_layers_per_task": 1}, "reference")
    reference, reference_log = _run_to_end(reference_path)
    assert reference_log.count("from the model's stream") == 2  # one group per layer

    killed_path = _stream_study(tmp_path, tiny_model_storage, SHORT, "killed")
    config = load_config(killed_path)
    store = ArtifactStore(config.storage.location)
    checkpoints = [Path(store.url(sae_checkpoint_relpath(config, layer))) for layer in (1, 2)]
    victim = subprocess.Popen(_worker(killed_path), env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert victim.stderr is not None
    for line in victim.stderr:  # USR1 once training is under way (after step 40 of 200)
        if "step 40/200" in line:
            victim.send_signal(signal.SIGUSR1)
            break
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in checkpoints) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the worker ended before it could be killed"
    assert all(p.exists() for p in checkpoints), "USR1 wrote no checkpoint"
    states = [torch.load(io.BytesIO(p.read_bytes()), map_location="cpu", weights_only=True) for p in checkpoints]
    assert states[0]["step"] == states[1]["step"] and 40 <= states[0]["step"] < 200
    assert states[0]["position"] == states[1]["position"]
    assert not store.exists(saes_relpath(config, 1))

    resumed, log = _run_to_end(killed_path)
    assert log.count(f"resumed from the checkpoint at step {states[0]['step']}/200") == 2, log[-3000:]
    assert log.count("from the model's stream") == 1  # one group, one forward pass per batch for both
    for layer in ("1", "2"):
        assert resumed["partitions"][layer]["resumed_from_step"] == states[0]["step"]
        assert resumed["partitions"][layer]["weights_sha256"] == reference["partitions"][layer]["weights_sha256"], layer
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_array_tasks_are_one_per_layer_or_one_per_stream_group() -> None:
    keys = ["10", "11", "12", "13", "14"]
    assert parse_config(_config({})).sae.layer_groups(keys) == [[k] for k in keys]
    assert parse_config(_config(STREAM)).sae.layer_groups(keys) == [keys]
    grouped = parse_config(_config({**STREAM, "stream_layers_per_task": 2})).sae
    assert grouped.layer_groups(keys) == [["10", "11"], ["12", "13"], ["14"]]
    assert grouped.layer_groups([10, 11, 12]) == [[10, 11], [12]]  # what the worker's own grouping gets
