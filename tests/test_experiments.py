"""A lab's instance: experiments side by side, each a namespace (asset-key prefix, code location,
pools, storage folder), and the errors that keep two of them from ever sharing one.

The slow test runs two experiments (the tiny study and a TopK variant with its own storage
prefix) and a broken third config through one real `dagster dev`: the broken one fails only its
own code location; the same asset partition of one experiment waits for its running twin while
the other experiment's run of that asset goes ahead; neither experiment touches the other's
files, history or staleness.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from helpers import PROJECT_ROOT, SMALL_CORPUS, seed_tiny_model, wait_for, write_config

from interp_assets.config import ConfigError, load_config
from interp_assets.definitions import build_definitions

EXPERIMENTS = PROJECT_ROOT / "configs" / "experiments"


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _workspace(monkeypatch: pytest.MonkeyPatch, experiments: Path) -> str:
    from interp_assets.workspace import workspace_yaml

    monkeypatch.delenv("INTERP_ASSETS_CONFIG", raising=False)
    monkeypatch.setenv("INTERP_ASSETS_EXPERIMENTS", str(experiments))
    return workspace_yaml(".")


def _variant(folder: Path, name: str, file: str = "variant.yaml", **sections: dict) -> Path:
    path = folder / file
    path.write_text(yaml.safe_dump({"base": "tiny.yaml", "experiment": {"name": name}, **sections}))
    return path


# ---- the shipped experiments ---------------------------------------------------------------------

def test_the_checked_in_workspace_is_every_shipped_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    """workspace.yaml (for a plain `dagster dev` in the checkout) is what the generator writes."""
    text = _workspace(monkeypatch, EXPERIMENTS)
    assert (PROJECT_ROOT / "workspace.yaml").read_text() == text, \
        "regenerate it: python -m interp_assets.workspace --out workspace.yaml --working-directory ."
    locations = [entry["python_module"] for entry in yaml.safe_load(text)["load_from"]]
    assert [(e["location_name"], e["attribute"]) for e in locations] == [("tiny", "tiny"), ("tiny_sweep", "tiny_sweep"), ("tiny_topk", "tiny_topk")]


def test_two_experiments_have_their_own_keys_pools_and_folders() -> None:
    tiny, topk = (load_config(EXPERIMENTS / f"{name}.yaml") for name in ("tiny", "tiny_topk"))
    assert (tiny.sae.architecture, topk.sae.architecture) == ("relu", "topk")
    graphs = {c.name: build_definitions(c.source_path).resolve_asset_graph() for c in (tiny, topk)}
    keys = {name: set(graph.get_all_asset_keys()) for name, graph in graphs.items()}
    assert not keys["tiny"] & keys["tiny_topk"]
    for name, graph in graphs.items():
        assert {key.path[0] for key in keys[name]} == {name}
        # Every dependency stays inside the experiment; every check is on its own keys.
        assert all(parent.path[0] == name for key in keys[name] for parent in graph.get(key).parent_keys)
        assert {check.asset_key.path[0] for check in graph.asset_check_keys} == {name}
        pools = {key.path[-1]: graph.get(key).pools for key in keys[name]}
        assert pools["saes"] == {f"{name}.saes"} and pools["baselines"] == {f"{name}.baselines"}
    # Storage: one root for the lab, apart from the Dagster instance; a folder per experiment.
    assert tiny.storage.root == topk.storage.root == str((PROJECT_ROOT / "studies").resolve())
    folders = [Path(c.storage.location) for c in (tiny, topk)]
    assert folders[0] != folders[1] and not folders[0].is_relative_to(folders[1]) \
        and not folders[1].is_relative_to(folders[0])
    assert not any(f.is_relative_to(PROJECT_ROOT / "dagster_home") for f in folders)


# ---- bad input -----------------------------------------------------------------------------------

def test_two_configs_with_one_name_are_refused_naming_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, name="tiny.yaml")
    _variant(tmp_path, "tiny", file="copy.yaml")
    env = {**os.environ, "INTERP_ASSETS_EXPERIMENTS": str(tmp_path)}
    env.pop("INTERP_ASSETS_CONFIG", None)
    out = tmp_path / "workspace.yaml"
    done = subprocess.run([sys.executable, "-m", "interp_assets.workspace", "--out", str(out)], env=env,
                          capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 2 and not out.exists()  # dev.sh stops here: nothing starts, nothing runs
    assert "experiment.name 'tiny' is declared by 2 configs" in done.stderr
    assert str(tmp_path / "copy.yaml") in done.stderr and str(tmp_path / "tiny.yaml") in done.stderr
    assert "rename all but one" in done.stderr
    # A location asked for that name (a stale workspace file) fails to load, with the same words.
    monkeypatch.delenv("INTERP_ASSETS_CONFIG", raising=False)
    monkeypatch.setenv("INTERP_ASSETS_EXPERIMENTS", str(tmp_path))
    from interp_assets import experiments

    experiments._definitions.cache_clear()
    with pytest.raises(ConfigError, match="experiment.name 'tiny' is declared by 2 configs"):
        experiments.tiny  # noqa: B018


@pytest.mark.parametrize(("variant", "message"), [
    ({"experiment": {"paper_id": "x"}}, r"experiment\.name: a config built on base 'tiny\.yaml' must name its own"),
    ({"experiment": {"name": "tiny-topk"}}, r"experiment\.name: 'tiny-topk' is not a safe identifier.*'tiny_topk'"),
    ({"experiment": {"name": "topk"}, "sae": {"architecture": "jumprelu"}}, r"sae\.architecture: Input should be"),
    ({"experiment": {"name": "topk"}, "sae": {"kk": 8}}, r"sae\.kk: unknown key"),
    ({"base": "nosuch.yaml", "experiment": {"name": "topk"}}, r"base: 'nosuch\.yaml' is not another config file"),
])
def test_a_bad_variant_names_the_field(tmp_path: Path, variant: dict, message: str) -> None:
    write_config(tmp_path, name="tiny.yaml")
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump({"base": "tiny.yaml", **variant}))
    with pytest.raises(ConfigError, match=message):
        build_definitions(path)


def test_a_variant_gets_its_own_folder_unless_it_names_one(tmp_path: Path) -> None:
    base = load_config(write_config(tmp_path, name="tiny.yaml"))
    own = load_config(_variant(tmp_path, "topk", sae={"architecture": "topk"}))
    # The base's prefix is the base experiment's folder: the variant's default is its own name.
    assert (base.storage.prefix, own.storage.prefix) == ("storage", "topk")
    assert own.storage.root == base.storage.root
    assert own.sae.architecture == "topk" and own.sae.steps == base.sae.steps
    named = load_config(_variant(tmp_path, "topk", storage={"prefix": "sweeps/topk"}))
    assert named.storage.location == str(Path(base.storage.root) / "sweeps" / "topk")


# ---- moving a study written before namespaces ----------------------------------------------------

def test_migrate_moves_an_old_study_into_its_experiment_folder(tmp_path: Path) -> None:
    old = tmp_path / "dagster_home" / "storage"
    for relpath, text in {"prompts/ioi.parquet": "p", "saes/mlp_post/layer_001/cfg.json": "{}",
                          "models/tiny-abc/config.json": "m"}.items():
        (old / relpath).parent.mkdir(parents=True, exist_ok=True)
        (old / relpath).write_text(text)
    (old / "runs").mkdir()  # Dagster's own folders stay where they are
    before = _tree_hashes(old)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({**yaml.safe_load((EXPERIMENTS / "tiny.yaml").read_text()),
                                           "storage": {"root": str(tmp_path / "studies")}}))
    command = [sys.executable, "-m", "interp_assets.migrate", str(config_path), "--from", str(old)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert _tree_hashes(tmp_path / "studies" / "tiny") == before
    assert sorted(p.name for p in old.iterdir()) == ["runs"]
    # Again, with the old folder back: nothing is overwritten, and it says what it left.
    (old / "prompts").mkdir()
    (old / "prompts" / "ioi.parquet").write_text("other")
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 1 and "left ['prompts']" in done.stderr
    assert (tmp_path / "studies" / "tiny" / "prompts" / "ioi.parquet").read_text() == "p"


# ---- two experiments in one instance, through dagster dev ----------------------------------------

SMALL_STUDY = {
    "activations": {"layers": "1-2"},
    "attribution": {"key_layers": [1, 2]},
    "corpus": SMALL_CORPUS,
    "sae": {"steps": 150, "lr_warmup_steps": 20, "lr_decay_steps": 30, "l1_warmup_steps": 20,
            "checkpoint_every": 100, "log_every": 50, "min_explained_variance": 0.0, "max_dead_fraction": 1.0},
    "automation": {"enabled": False},
}


@pytest.mark.slow
def test_two_experiments_side_by_side_in_one_instance(tmp_path: Path, tiny_model_storage: Path) -> None:
    import shutil

    from concurrent_runs import pause_slot_holder, resume, slot_holders, step_window, was_blocked
    from dagster_dev import (
        STALENESS_BY_PARTITION,
        launch_assets,
        launch_backfill,
        start_dagster_dev,
        wait_for_run,
        wait_for_runs,
        workspace_locations,
    )

    experiments = tmp_path / "experiments"
    experiments.mkdir()
    studies = tmp_path / "studies"
    tiny_path = write_config(experiments, {**SMALL_STUDY, "storage": {"root": str(studies), "prefix": "tiny"}},
                             name="tiny.yaml")
    topk_path = _variant(experiments, "tiny_topk", file="tiny_topk.yaml", sae={"architecture": "topk", "k": 8},
                         storage={"prefix": "sweeps/tiny_topk"})
    # A third config with a misspelt key: its own location fails; the other two load and run.
    broken = yaml.safe_load(tiny_path.read_text())
    broken["experiment"]["name"] = "broken"
    broken["sae"]["l1_coeficient"] = 1.0
    (experiments / "broken.yaml").write_text(yaml.safe_dump(broken))
    configs = {c.name: c for c in (load_config(tiny_path), load_config(topk_path))}
    folders = {name: Path(c.storage.location) for name, c in configs.items()}
    assert folders == {"tiny": studies / "tiny", "tiny_topk": studies / "sweeps" / "tiny_topk"}
    for folder in folders.values():
        seed_tiny_model(folder, tiny_model_storage)

    home = tmp_path / "dagster_home"
    home.mkdir(mode=0o700)
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    dev = start_dagster_dev(home, None, tmp_path / "dagster_dev.log", experiments=experiments)
    paused = None
    try:
        locations = workspace_locations(dev, expected=3)
        assert {n: e["locationOrLoadError"]["__typename"] for n, e in locations.items()} == {
            "broken": "PythonError", "tiny": "RepositoryLocation", "tiny_topk": "RepositoryLocation"}
        error = locations["broken"]["locationOrLoadError"]
        assert "sae.l1_coeficient: unknown key" in "\n".join([error["message"], *(c["message"] for c in error["causes"])])

        def finished(backfill_id: str) -> list[dict]:
            done = wait_for_runs(dev, {"dagster/backfill": backfill_id}, timeout=600)
            assert all(r["status"] == "SUCCESS" for r in done), (done, dev.log_tail())
            return done

        def both_layers_in_one_run(experiment: str, assets: list[str]) -> None:
            # One run of the layer range, as the UI launches it (no backfill daemon tick to wait for).
            run_id = launch_assets(dev, assets, experiment=experiment, partition_range=("1", "2"), with_checks=True)
            assert wait_for_run(dev, run_id)["status"] == "SUCCESS", dev.log_tail()

        # Activations read every behaviour's prompts; both experiments' are launched at once.
        for backfill_id in [launch_backfill(dev, ["prompts"], ["ioi", "capitals"], experiment=n) for n in configs]:
            finished(backfill_id)

        with dg.DagsterInstance.from_config(str(home)) as instance:
            # tiny's baselines [ioi] holds its pool with its worker paused; a second run of that
            # partition waits, while tiny_topk's baselines [ioi] runs to the end beside it.
            first = launch_backfill(dev, ["baselines"], ["ioi"], experiment="tiny")
            first_runs = wait_for("tiny's first baselines run", lambda: [
                r.run_id for r in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": first}))])
            paused = pause_slot_holder(instance, dev.process.pid, set(first_runs), "baselines", pool="tiny.baselines")
            twin = launch_backfill(dev, ["baselines"], ["ioi"], experiment="tiny")
            other = wait_for_runs(dev, {"dagster/backfill": launch_backfill(dev, ["baselines"], ["ioi"],
                                                                           experiment="tiny_topk")}, timeout=300)
            assert [r["status"] for r in other] == ["SUCCESS"], dev.log_tail()
            twin_runs = wait_for("tiny's second baselines run", lambda: [
                r.run_id for r in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": twin}))])
            (waiter,) = twin_runs

            def waiting() -> bool:
                return was_blocked(instance, waiter, "tiny.baselines") or \
                    f"Run {waiter} is blocked by global concurrency limits" in dev.log_tail(200_000)

            wait_for(f"tiny's second run {waiter} to wait for its pool", waiting)
            assert slot_holders(instance, "tiny.baselines") == {paused.holder}
            assert instance.get_run_by_id(waiter).status != dg.DagsterRunStatus.SUCCESS
            resume(paused)
            paused = None
            for run_id in (first_runs[0], waiter):
                assert wait_for_run(dev, run_id)["status"] == "SUCCESS", dev.log_tail()
            _, first_end = step_window(instance, first_runs[0], "baselines")
            twin_start, _ = step_window(instance, waiter, "baselines")
            assert twin_start >= first_end  # the same partition: one after the other
            other_start, other_end = step_window(instance, other[0]["runId"], "baselines")
            assert other_end <= first_end  # the other experiment's ran while tiny's held its pool

            # Each experiment's heavy phases; tiny's files are hashed before tiny_topk's run.
            both_layers_in_one_run("tiny", ["activations", "saes"])
            tiny_files = _tree_hashes(folders["tiny"])
            tiny_history = len(instance.fetch_materializations(dg.AssetKey(["tiny", "saes"]), limit=100).records)
            both_layers_in_one_run("tiny_topk", ["activations", "saes"])
            assert _tree_hashes(folders["tiny"]) == tiny_files
            assert len(instance.fetch_materializations(dg.AssetKey(["tiny", "saes"]), limit=100).records) == tiny_history
            topk_saes = instance.fetch_materializations(dg.AssetKey(["tiny_topk", "saes"]), limit=100).records
            assert sorted(r.partition_key for r in topk_saes) == ["1", "2"]
            topk_files = _tree_hashes(folders["tiny_topk"])
            for name, architecture in (("tiny", "standard"), ("tiny_topk", "topk")):
                cfg = json.loads((folders[name] / "saes" / "mlp_post" / "layer_001" / "cfg.json").read_text())
                assert cfg["architecture"] == architecture
            assert any(p.startswith("saes/") for p in topk_files) and not set(topk_files) & {
                str(Path("sweeps/tiny_topk") / p) for p in tiny_files}
            every_file = {str(p.relative_to(studies)) for p in studies.rglob("*") if p.is_file()}
            assert every_file == {f"tiny/{p}" for p in tiny_files} | {f"sweeps/tiny_topk/{p}" for p in topk_files}

        # Staleness is per experiment: an SAE edit of tiny_topk stales its saes, not tiny's.
        topk_path.write_text(topk_path.read_text().replace("k: 8", "k: 12"))
        from dagster_dev import RELOAD

        reload = dev.graphql(RELOAD, {"name": "tiny_topk"})["reloadRepositoryLocation"]
        assert reload["locationOrLoadError"]["__typename"] == "RepositoryLocation", reload
        stale = {name: set(dev.graphql(STALENESS_BY_PARTITION, {"keys": [{"path": [name, "saes"]}], "partitions": ["1", "2"]})
                           ["assetNodes"][0]["staleStatusByPartition"]) for name in configs}
        assert stale == {"tiny": {"FRESH"}, "tiny_topk": {"STALE"}}, stale
    finally:
        if paused is not None:
            resume(paused)
        dev.stop()
