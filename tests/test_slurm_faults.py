"""SLURM faults against the real local cluster (scripts/slurm-local.sh), no mocks:

1. a job past its ``--time`` ends TIMEOUT, is resubmitted and resumes from the checkpoint that
   SLURM's warning signal (USR1) made it write, ending with the same weights as an uninterrupted run;
2. slurmctld and slurmd killed (SIGKILL) mid-job and restarted: the run rides it out, or, when the
   controller stays away past ``controller_grace_seconds``, fails clearly; either way every published
   artifact is complete and matches its recorded sha256, and a rerun reuses it;
3. last (it restarts the cluster with ``task/cgroup``): a job over its ``mem`` ends OUT_OF_MEMORY,
   the failure says which ``mem`` to raise, and it is not resubmitted.

Everything is skipped, with the script's reason, only when the cluster cannot start (not root, no apt).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import torch
from helpers import PROJECT_ROOT, copy_study, run_log, seed_tiny_model, wait_for, write_config
from slurm_cluster import SCRIPT, cluster, cluster_lifetime, failure_text, jobs, materialize, slurm  # noqa: F401 (a fixture)

from interp_assets.config import load_config
from interp_assets.artifacts import sae_checkpoint_relpath, saes_relpath
from resources.compute import LocalCompute

from resources.storage import sha256_file

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LAYER = "1"
SAE = {"log_every": 50, "lr_warmup_steps": 20, "lr_decay_steps": 100, "l1_warmup_steps": 100, "dead_window_steps": 200,
       "eval_vectors": 512, "min_explained_variance": 0.0, "max_dead_fraction": 1.0}


def script(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"slurm-local.sh {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return done


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_model_storage: Path) -> Path:
    """A storage root with the tiny model, prompts and layer 1's activations (made locally: the
    SLURM path of these is test_slurm's business); each test copies what it trains on."""
    cluster()
    root = tmp_path_factory.mktemp("slurm-faults")
    config_path = write_config(root)
    seed_tiny_model(load_config(config_path).storage.location, tiny_model_storage)
    compute = LocalCompute(torch_threads=1)
    with dg.instance_for_test() as instance:
        for behaviour in load_config(config_path).prompts.behaviours:
            assert materialize(config_path, ["prompts"], compute, instance, partition_key=behaviour).success
        assert materialize(config_path, ["activations"], compute, instance, partition_key=LAYER).success
    return config_path


def copy_layer_study(study: Path, target: Path, sae: dict) -> Path:
    return copy_study(load_config(study).storage.location, target, ("models", "activations"), {"sae": {**SAE, **sae}})


def worker_pid(job_id: str) -> int | None:
    """The job's worker process: the batch script ``exec``s it, so it is slurmstepd's child with the
    job's SLURM_JOB_ID (not a short-lived child the worker forks, which shares both)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            ppid = next(line.split()[1] for line in (entry / "status").read_text().splitlines() if line.startswith("PPid:"))
            parent = Path(f"/proc/{ppid}/comm").read_text().strip()
        except (OSError, StopIteration):
            continue
        if b"interp_assets.worker" in cmdline and f"SLURM_JOB_ID={job_id}".encode() in environ and parent == "slurmstepd":
            return int(entry.name)
    return None


def training_step(messages: Path) -> int:
    """The last ``step N/...`` the worker logged through its Pipes message file."""
    step = 0
    try:
        lines = messages.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if '"log"' in line and ": step " in line:
            text = json.loads(line)["params"]["message"]
            step = int(text.split(": step ")[1].split("/")[0])
    return step


class Background(threading.Thread):
    """Runs ``body`` beside the materialization in the main thread; re-raises its error on join."""

    def __init__(self, body: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.body, self.error = body, None

    def run(self) -> None:
        try:
            self.body()
        except BaseException as error:  # noqa: BLE001
            self.error = error

    def finish(self, timeout: float = 120) -> None:
        self.join(timeout)
        if self.error is not None:
            raise self.error


def reference_worker(config_path: Path) -> subprocess.Popen[str]:
    """The same training run uninterrupted, outside SLURM, with one torch thread like the job."""
    env = {**os.environ, "INTERP_ASSETS_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "interp_assets.worker", "saes", "--partition", LAYER,
                             "--config", str(config_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def assert_published_saes_are_complete(config_path: Path) -> dict[str, str]:
    """Every SAE folder under the storage root is complete (``_COMPLETE``) and its weights match the
    sha256 recorded in its training.json; nothing else (a partial folder) is visible. Returns
    {layer folder: weights sha256}."""
    config = load_config(config_path)
    saes = Path(config.storage.location) / Path(saes_relpath(config, int(LAYER))).parent
    found = {}
    for folder in sorted(saes.iterdir()) if saes.exists() else []:
        assert ".tmp-" not in folder.name, f"a staging folder was left behind: {folder}"
        assert (folder / "_COMPLETE").exists(), f"{folder} is published without _COMPLETE"
        record = json.loads((folder / "training.json").read_text())
        actual = sha256_file(folder / "sae_weights.safetensors")
        assert actual == record["summary"]["weights_sha256"], f"{folder}: weights differ from their recorded sha256"
        found[folder.name] = actual
    return found


# ---- 1. TIMEOUT: resubmitted, resumed from the USR1 checkpoint, same weights -------------------


def resumable_run(study: Path, tmp_path: Path, sae: dict) -> tuple[Path, subprocess.Popen[str], Path, set[str]]:
    """(config, its uninterrupted reference run, the checkpoint's path, the job ids before): a
    layer-1 SAE run on SLURM that a fault will interrupt, and the same run outside SLURM."""
    config_path = copy_layer_study(study, tmp_path / "slurm", sae)
    reference = reference_worker(copy_layer_study(study, tmp_path / "reference", sae))
    config = load_config(config_path)
    checkpoint = Path(config.storage.location) / sae_checkpoint_relpath(config, int(LAYER))
    return config_path, reference, checkpoint, {j["job_id"] for j in jobs()}


def first_running_job(before: set[str]) -> dict[str, str]:
    return wait_for("the first job to run", lambda: next(
        (j for j in jobs(name="ia-saes") if j["job_id"] not in before and j["state"] == "RUNNING"), None), every=0.5)


def materialize_through(fault: Callable[[], None], config_path: Path, compute: object,
                        reference: subprocess.Popen[str]) -> tuple[dg.ExecuteInProcessResult, str, str]:
    """Layer 1's SAE through SlurmCompute while ``fault`` strikes in the background: (result, run
    log, the reference run's output), both runs having succeeded."""
    chaos = Background(fault)
    chaos.start()
    with dg.instance_for_test() as instance:
        result = materialize(config_path, ["saes"], compute, instance, partition_key=LAYER)
        log = run_log(instance, result.run_id)
    chaos.finish()
    assert result.success, failure_text(result)
    expected, errors = reference.communicate(timeout=600)
    assert reference.returncode == 0, errors[-3000:]
    return result, log, expected


def test_a_job_past_its_time_limit_is_resubmitted_and_resumes_to_identical_weights(study: Path, tmp_path: Path) -> None:
    """``time=2`` (two minutes: the shortest limit a profile may give ``signal_seconds=30``). The first attempt is made too slow to finish
    whatever this machine's speed, as a stuck job would be: its worker is frozen (SIGSTOP) once
    training is under way. SLURM's USR1 warning comes with a SIGCONT, so the worker runs just long
    enough to write the checkpoint USR1 asks for, and is frozen again; SLURM ends the job TIMEOUT,
    SlurmCompute resubmits it and the new attempt resumes from that checkpoint, the only one there
    is (``checkpoint_every`` is beyond ``steps``). The weights equal an uninterrupted run's."""
    steps = 1500
    sae = {"steps": steps, "checkpoint_every": 10 * steps}
    config_path, reference, checkpoint, before = resumable_run(study, tmp_path, sae)
    seen: dict[str, object] = {}

    def first_attempt_runs_out_of_time() -> None:
        job = first_running_job(before)
        messages = wait_for("its Pipes message file",
                            lambda: next((tmp_path / "slurm-logs").glob("*/saes/messages.jsonl"), None))
        seen["job"] = job["job_id"]
        wait_for("training to get under way (or USR1's checkpoint)",
                 lambda: training_step(messages) >= 50 or checkpoint.exists(), timeout=240, every=0.02)
        pid = wait_for("its worker process", lambda: worker_pid(job["job_id"]), timeout=30)
        os.kill(pid, signal.SIGSTOP)
        # SLURM's USR1, `signal_seconds` (or up to ~30 s more) before the limit, comes with a SIGCONT:
        # the worker checkpoints after its current step. Freeze it again as soon as the checkpoint is
        # there (under load USR1 may have come first: then it is frozen already).
        if not checkpoint.exists():
            wait_for("the checkpoint USR1 asks for", checkpoint.exists, timeout=120, every=0.01)
            os.kill(pid, signal.SIGSTOP)
        # ...and it stays too slow until SLURM's time limit ends it (SIGCONT + SIGTERM, then SIGKILL).
        seen["checkpoint_step"] = torch.load(checkpoint, weights_only=False)["step"]

    result, log, expected = materialize_through(
        first_attempt_runs_out_of_time, config_path, slurm(tmp_path, time="2", signal_seconds=30, max_resubmits=4),
        reference)

    # SLURM's own record: the first job ran out of time, a later one finished; nothing else ran.
    ours = [j for j in jobs(name="ia-saes") if j["job_id"] not in before]
    assert ours[0]["job_id"] == seen["job"] and ours[0]["state"] == "TIMEOUT", ours
    assert ours[-1]["state"] == "COMPLETED" and all(j["state"] == "TIMEOUT" for j in ours[:-1]), ours
    md = result.asset_materializations_for_node("saes")[0].metadata
    assert md["slurm/submissions"].value == [j["job_id"] for j in ours]
    assert md["slurm/attempts"].value == len(ours) >= 2
    assert md["slurm/job_id"].value == ours[-1]["job_id"] and md["slurm/state"].value == "COMPLETED"
    assert f"saes ({seen['job']}) ended TIMEOUT" in log and "resubmitting (attempt 2 of 5)" in log
    assert "worker: USR1 received: checkpointing at the next training step" in log  # the job's stderr, streamed

    # The resubmitted attempt resumed from the first attempt's USR1 checkpoint, past where it froze.
    resumed = int(md["resumed_from_step"].value)
    assert 0 < resumed == seen["checkpoint_step"] < steps, (seen, resumed)
    assert f"layer {LAYER}: resumed from the checkpoint at step {resumed}/{steps}" in log
    assert not checkpoint.exists()  # removed once the SAE was published

    # Bit-identical to the uninterrupted run, and the published file is what was recorded.
    reference_sha = json.loads(expected.strip().splitlines()[-1])["partitions"][LAYER]["weights_sha256"]
    assert md["weights_sha256"].value == reference_sha, f"resumed at step {resumed}: weights differ from an uninterrupted run"
    assert assert_published_saes_are_complete(config_path) == {f"layer_{int(LAYER):03d}": reference_sha}




def test_a_node_that_fails_mid_job_ends_it_node_fail_and_the_resubmission_resumes_to_identical_weights(
    study: Path, tmp_path: Path
) -> None:
    """The node is set DOWN while the SAE trains (`scontrol update state=down`, as a dying node looks
    to SLURM), then back; the job ends NODE_FAIL, SlurmCompute resubmits it, the new attempt
    resumes from the last periodic checkpoint, and the weights equal an uninterrupted run's."""
    steps = 1200
    sae = {"steps": steps, "checkpoint_every": 200}
    config_path, reference, checkpoint, before = resumable_run(study, tmp_path, sae)
    seen: dict[str, object] = {}

    def node_fails_mid_job() -> None:
        job = first_running_job(before)
        wait_for("a checkpoint", checkpoint.exists, timeout=240, every=0.05)
        node = subprocess.run(["squeue", "-h", "-j", job["job_id"], "-o", "%N"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
        seen.update(job=job["job_id"], node=node)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=interp-assets-test"],
                       check=True, timeout=60)
        try:
            seen["end"] = wait_for("the job to end", lambda: next(
                (j["state"] for j in jobs(job["job_id"]) if j["state"] not in ("RUNNING", "COMPLETING")), None),
                timeout=120, every=0.2)
        finally:
            # ReturnToService=2 may have put it back already ("Invalid node state specified" then).
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True, timeout=60)

    result, log, expected = materialize_through(node_fails_mid_job, config_path, slurm(tmp_path, max_resubmits=2),
                                                reference)

    ours = [j for j in jobs(name="ia-saes") if j["job_id"] not in before]
    assert ours[0]["job_id"] == seen["job"] and ours[0]["state"] == "NODE_FAIL", (ours, seen)
    assert ours[-1]["state"] == "COMPLETED" and len(ours) == 2, ours
    assert f"node(s) {seen['node']} failed under {seen['job']}" in log
    assert f"saes ({seen['job']}) ended NODE_FAIL" in log and "resubmitting (attempt 2 of 3)" in log
    md = result.asset_materializations_for_node("saes")[0].metadata
    resumed = int(md["resumed_from_step"].value)
    assert resumed > 0 and resumed % 200 == 0, resumed
    reference_sha = json.loads(expected.strip().splitlines()[-1])["partitions"][LAYER]["weights_sha256"]
    assert md["weights_sha256"].value == reference_sha, f"resumed at step {resumed}: weights differ from an uninterrupted run"
    assert assert_published_saes_are_complete(config_path) == {f"layer_{int(LAYER):03d}": reference_sha}


# ---- 2. slurmctld / slurmd killed mid-job ------------------------------------------------------


def logged(instance: dg.DagsterInstance, text: str) -> bool:
    """Whether the (only) run in ``instance`` has logged ``text`` so far (read from another thread)."""
    runs = instance.get_runs()
    return bool(runs) and any(text in (entry.user_message or "") for entry in instance.all_logs(runs[0].run_id))


def test_slurmctld_and_slurmd_killed_mid_job_are_ridden_out(study: Path, tmp_path: Path) -> None:
    """SIGKILL slurmctld while the job trains; SlurmCompute's polls fail (``Unable to contact slurm
    controller``) and keep going; slurmctld restarts and recovers the job from its saved state. Then
    SIGKILL slurmd; the job's slurmstepd keeps it running; slurmd restarts and reattaches. The run
    succeeds and the published SAE is complete, with the weights sha256 it recorded."""
    config_path = copy_layer_study(study, tmp_path / "slurm", {"steps": 1200, "checkpoint_every": 200})
    before = {j["job_id"] for j in jobs()}
    seen: dict[str, object] = {}

    with dg.instance_for_test() as instance:
        def crash_both_daemons() -> None:
            job = wait_for("the job to run", lambda: next(
                (j for j in jobs(name="ia-saes") if j["job_id"] not in before and j["state"] == "RUNNING"), None), every=0.5)
            messages = wait_for("its Pipes message file",
                                lambda: next((tmp_path / "slurm-logs").glob("*/saes/messages.jsonl"), None))
            wait_for("training to get under way", lambda: training_step(messages) >= 100, timeout=240)
            script("kill-daemon", "slurmctld")
            # Down until SlurmCompute has seen it down (a status poll failed), then back.
            wait_for("a failed status poll", lambda: logged(instance, "Unable to contact slurm controller"), timeout=240, every=1)
            script("restart-daemon", "slurmctld")
            wait_for("the polls to get answers again", lambda: logged(instance, "answers again after"), timeout=240, every=1)
            seen["step_before_slurmd"] = training_step(messages)
            script("kill-daemon", "slurmd")
            # The job runs on without slurmd: its slurmstepd is a process of its own.
            wait_for("training to go on without slurmd",
                     lambda: training_step(messages) >= seen["step_before_slurmd"] + 100 or
                     not any(j["job_id"] == job["job_id"] and j["state"] == "RUNNING" for j in jobs()), timeout=240)
            script("restart-daemon", "slurmd")
            seen["job"] = job["job_id"]

        chaos = Background(crash_both_daemons)
        chaos.start()
        result = materialize(config_path, ["saes"], slurm(tmp_path), instance, partition_key=LAYER)
        chaos.finish()
        log = run_log(instance, result.run_id)
    assert result.success, failure_text(result)
    assert "[slurm] squeue failed" in log and "the controller may be restarting: polling again with backoff" in log
    (job,) = [j for j in jobs(name="ia-saes") if j["job_id"] not in before]
    assert job["job_id"] == seen["job"] and job["state"] == "COMPLETED", job
    md = result.asset_materializations_for_node("saes")[0].metadata
    assert md["slurm/state"].value == "COMPLETED" and md["slurm/job_id"].value == job["job_id"]
    published = assert_published_saes_are_complete(config_path)
    assert published == {f"layer_{int(LAYER):03d}": md["weights_sha256"].value}
    assert script("status").returncode == 0  # both daemons are back and the node is usable


def test_a_controller_down_past_the_grace_period_fails_clearly_and_nothing_partial_is_published(
    study: Path, tmp_path: Path
) -> None:
    """slurmctld stays down longer than ``controller_grace_seconds``: the step fails saying so, with
    SLURM's error and what to do. The job itself runs on; whatever it has published by then, and
    after slurmctld is back, is complete and matches its recorded sha256; the rerun reuses it."""
    # Fewer steps than the test above: the worker is frozen through the outage, so it need not outlast it.
    config_path = copy_layer_study(study, tmp_path / "slurm", {"steps": 400, "checkpoint_every": 200})
    before = {j["job_id"] for j in jobs()}
    run_over = threading.Event()

    def controller_stays_down() -> None:
        job = wait_for("the job to run", lambda: next(
            (j for j in jobs(name="ia-saes") if j["job_id"] not in before and j["state"] == "RUNNING"), None), every=0.5)
        messages = wait_for("its Pipes message file",
                            lambda: next((tmp_path / "slurm-logs").glob("*/saes/messages.jsonl"), None))
        wait_for("training to get under way", lambda: training_step(messages) >= 100, timeout=240)
        # The worker is frozen while slurmctld is away, so that the job cannot end meanwhile: SLURM
        # 22.05 requeues and holds a job whose batch step ended while slurmctld was down, and may
        # drain the node for it ("Duplicate jobid"), which is not what this test is about.
        pid = wait_for("its worker process", lambda: worker_pid(job["job_id"]), timeout=30)
        os.kill(pid, signal.SIGSTOP)
        script("kill-daemon", "slurmctld")
        try:
            run_over.wait(600)
            # While slurmctld is still down: nothing partial is visible (nothing is published yet).
            assert assert_published_saes_are_complete(config_path) == {}
        finally:
            script("restart-daemon", "slurmctld")
            with contextlib.suppress(ProcessLookupError):  # recovering, slurmctld may have ended it already
                os.kill(pid, signal.SIGCONT)

    chaos = Background(controller_stays_down)
    chaos.start()
    with dg.instance_for_test() as instance:
        try:
            failed = materialize(config_path, ["saes"], slurm(tmp_path, controller_grace_seconds=20), instance,
                                 partition_key=LAYER)
        finally:
            run_over.set()
        chaos.finish()
        assert not failed.success
        text = failure_text(failed)
        assert "the SLURM controller did not answer squeue for" in text and "controller_grace_seconds=20" in text, text[-3000:]
        assert "Unable to contact slurm controller" in text and "may still be running" in text, text[-3000:]

        # slurmctld is back with the job (the scancel during the outage could not reach it). It
        # ends (or is relaunched and ends), or, when its batch step ended while slurmctld was down, SLURM requeues and holds it
        # ("launch failed requeued held"): an operator cancels it, as here.
        (job,) = [j for j in jobs(name="ia-saes") if j["job_id"] not in before]

        def settled() -> str | None:
            out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job["job_id"], "-o", "%T|%r"], capture_output=True,
                                 text=True, timeout=120).stdout.strip()
            state, _, reason = out.partition("|")
            return out if state not in ("", "PENDING", "RUNNING", "COMPLETING") or "held" in reason.lower() else None

        ended = wait_for("the job to end or be held", settled, timeout=300, every=1)
        if "held" in ended.lower():
            subprocess.run(["scancel", job["job_id"]], check=True, timeout=120)
        else:
            # FAILED: relaunched after the step had failed, it found no Pipes context (removed with the session).
            assert ended.split("|")[0] in ("COMPLETED", "CANCELLED", "FAILED"), ended
        assert script("status", check=False).returncode == 0, "the node is not usable after slurmctld's restart"
        published = assert_published_saes_are_complete(config_path)

        rerun = materialize(config_path, ["saes"], slurm(tmp_path), instance, partition_key=LAYER)
        assert rerun.success, failure_text(rerun)
        md = rerun.asset_materializations_for_node("saes")[0].metadata
        log = run_log(instance, rerun.run_id)
    after = assert_published_saes_are_complete(config_path)
    assert after == {f"layer_{int(LAYER):03d}": md["weights_sha256"].value}
    if published:  # the orphaned job finished and published: the rerun reused it, bytes unchanged
        assert published == after and f"layer {LAYER}: SAE already trained for this config and data, skipped" in log



# ---- 3. out of memory under cgroups ---------------------------------------------------------
# Last in the module: it restarts the cluster with task/cgroup (a fresh cluster).


def test_under_cgroups_a_job_over_its_memory_ends_out_of_memory_and_is_not_resubmitted(study: Path, tmp_path: Path) -> None:
    """Memory limits are enforced only with cgroups (``slurm-local.sh start --cgroup``: task/cgroup,
    ConstrainRAMSpace). A baselines job with ``mem=150M`` (the worker needs more to import torch and
    load the model) is killed by the kernel's cgroup OOM killer: SLURM says OUT_OF_MEMORY, the failure
    says which setting to raise, and SlurmCompute does not resubmit it (only TIMEOUT/PREEMPTED are)."""
    cluster("--cgroup")
    config_path = copy_layer_study(study, tmp_path / "slurm", {})
    shutil.copytree(Path(load_config(study).storage.location) / "prompts", tmp_path / "slurm" / "storage" / "prompts")
    compute = slurm(tmp_path, max_resubmits=3, overrides={"baselines": {"mem": "150M"}})
    with dg.instance_for_test() as instance:
        result = materialize(config_path, ["baselines"], compute, instance, partition_key="ioi")
        log = run_log(instance, result.run_id)
    assert not result.success
    (job,) = jobs(name="ia-baselines")  # a fresh cluster: only this job, never resubmitted
    assert job["state"] == "OUT_OF_MEMORY", job
    text = failure_text(result)
    assert f"baselines: SLURM job {job['job_id']} ended OUT_OF_MEMORY" in text, text[-3000:]
    assert "--mem=150M" in text and "raise `mem` for this task (SlurmCompute.overrides.baselines.mem, e.g. 300M)" in text
    assert "resubmitting" not in log and log.count("[slurm] submitted baselines as job") == 1
    assert not (tmp_path / "slurm" / "storage" / "baselines" / "ioi.parquet").exists()

