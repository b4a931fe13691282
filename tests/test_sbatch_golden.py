"""What SlurmCompute submits, byte for byte: for a few profiles, the command lines (sbatch, run
here or over ssh) and the batch script, and the status call (sacct with accounting, squeue
without). Each golden file in tests/data/sbatch/ was read by eye once; a change to rendering
shows up here as a diff. ``INTERP_ASSETS_UPDATE_GOLDEN=1`` rewrites them, on purpose."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import PROJECT_ROOT

from interp_assets.config import load_config
from resources.slurm import SlurmCompute
from resources.slurm.script import SshTarget, batch_script, over_ssh, sbatch_argv
from resources.slurm.status import sacct_argv, squeue_argv

GOLDEN = Path(__file__).parent / "data" / "sbatch"
CLUSTER = {"workdir": "/rds/project/interp/checkout", "log_dir": "/rds/project/interp/slurm-logs",
           "venv": "/rds/project/interp/venv", "module_loads": ["rhel8/default-amp", "cuda/12.1"]}


def bootstrap(index: int) -> dict[str, str]:
    """A Pipes bootstrap environment as Dagster writes it (base64 JSON), one per array task."""
    return {"DAGSTER_PIPES_CONTEXT": f"eyJwYXRoIjogImNvbnRleHQte{index}.json", "DAGSTER_PIPES_MESSAGES": f"eyJwYXRoIjogIm1lc3NhZ2Vz{index}="}

PROFILES = {
    # One job: baselines on the default partition, nothing but memory and time set.
    "plain": (dict(mem="8G", time="2:00:00", **CLUSTER), "baselines", 1, None),
    # A 4-layer SAE backfill: one array job, at most 2 tasks at once, a GPU each, an override.
    "array_throttled": (dict(partition="ampere", account="interp-sl3-gpu", gres="gpu:1", cpus=4, array_parallelism=2,
                             overrides={"saes": {"mem": "48G", "time": "6:00:00"}}, env={"HF_HUB_OFFLINE": "1"},
                             **CLUSTER), "saes", 4, "0-3"),
    # Dagster on a workstation: every cluster command runs on the login node over ssh.
    "ssh": (dict(ssh_host="login-q-1.hpc.cam.ac.uk", ssh_user="abc123", ssh_key_file="/home/abc/.ssh/id_ed25519",
                 ssh_known_hosts_file="/home/abc/.ssh/known_hosts_cd3", partition="ampere", **CLUSTER),
            "activations", 1, None),
    # A resubmission of array task 2 only, on a cluster whose status comes from squeue (no accounting).
    "resubmit_no_accounting": (dict(status_source="squeue", partition="ampere", signal_seconds=300, **CLUSTER),
                               "saes", 4, "2"),
    # time: auto / mem: auto: the tiny study's plan for one SAE array task on an A100-80GB × 1.5
    # (interp_assets.plan); a change of the plan's arithmetic shows up here.
    "auto_from_plan": (dict(partition="ampere", gres="gpu:1", time="auto", mem="auto", auto_device="a100-80gb",
                            auto_safety_factor=1.5, **CLUSTER), "saes", 4, "0-3"),
}


def render(profile: str) -> str:
    settings, task, n_tasks, array = PROFILES[profile]
    compute = SlurmCompute(**settings)
    compute.check_settings()
    run_dir = f"{compute.log_dir}/0f8e2c1a-run/{task}"
    spec = compute.batch_spec(task, run_dir, [bootstrap(i) for i in range(n_tasks)], as_array=n_tasks > 1,
                              config=load_config(PROJECT_ROOT / "configs" / "experiments" / "tiny.yaml"))
    status = squeue_argv(["4242"]) if compute.status_source == "squeue" else sacct_argv(["4242"], "2026-12-06T10:55:00")
    commands = [sbatch_argv(spec, array), status, ["scancel", "4242"]]
    if compute.ssh_host:
        target = SshTarget(compute.ssh_host, compute.ssh_user, compute.ssh_port, compute.ssh_key_file,
                           compute.ssh_known_hosts_file)
        commands = [over_ssh(argv, target) for argv in commands]
    lines = ["# submit (the batch script below goes on stdin)", *commands[0], "",
             "# status poll, one call for every job of the run", *commands[1], "",
             "# cancel", *commands[2], "", "# batch script", batch_script(spec)]
    return "\n".join(lines)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rendered_submission_matches_its_golden_file(profile: str) -> None:
    path = GOLDEN / f"{profile}.txt"
    text = render(profile)
    if os.environ.get("INTERP_ASSETS_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"rendering changed: diff {path} against render({profile!r})"
