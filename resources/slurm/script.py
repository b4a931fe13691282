"""What is submitted: the sbatch command line and the batch script, as pure functions of a small
spec (golden files in ``tests/data/sbatch/`` pin them byte for byte), and the ssh command line a
cluster command runs under when Dagster is not on the login node. Every value was checked by
``settings.check_settings`` and is shell-quoted here."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from resources.compute import WORKER_MODULE


@dataclass(frozen=True)
class BatchSpec:
    """Everything one submission of one worker task depends on."""

    task: str
    job: dict[str, Any]
    """This task's job settings (``settings.job_settings``): partition, account, qos, gres, cpus, mem, time,
    array_parallelism."""
    run_dir: str
    """Where the job's logs go (``<log_dir>/<run id>/<task>``)."""
    workdir: str
    python: str
    signal_seconds: int = 0
    module_loads: Sequence[str] = ()
    venv: str = ""
    conda_env: str = ""
    env: dict[str, str] = field(default_factory=dict)
    bootstrap: Sequence[dict[str, str]] = ()
    """The Pipes bootstrap environment: one entry for a plain job, one per array task of an array."""
    as_array: bool = False


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str = ""
    port: int = 22
    key_file: str = ""
    known_hosts_file: str = ""


def batch_script(spec: BatchSpec) -> str:
    """Environment setup, then the worker ``exec``-ed so that SLURM's signals (USR1 before the time
    limit, TERM on cancel) reach it directly."""
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# interp_assets worker task {spec.task}; submitted by SlurmCompute (options on the sbatch command line).",
        # Ignored (an ignored signal stays ignored across exec) until the worker installs its
        # handler: SLURM may send USR1 within a second of the start, and by default it kills.
        "trap '' USR1",
        "set -eo pipefail",
        'echo "interp_assets: job ${SLURM_JOB_ID} (array ${SLURM_ARRAY_JOB_ID:-none}_${SLURM_ARRAY_TASK_ID:-none}) '
        'on $(hostname) started $(date -Is)" >&2',
    ]
    lines += [f"module load {q(module)}" for module in spec.module_loads]
    if spec.venv:
        lines.append(f"source {q(spec.venv + '/bin/activate')}")
    if spec.conda_env:
        lines += ['eval "$(conda shell.bash hook)"', f"conda activate {q(spec.conda_env)}"]
    lines += [
        f"cd {q(spec.workdir)}",
        f'export PYTHONPATH={q(spec.workdir)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        "export INTERP_ASSETS_COMPUTE_BACKEND=slurm",
        f"export INTERP_ASSETS_TORCH_THREADS={int(spec.job['cpus'])}",
    ]
    lines += [f"export {key}={q(value)}" for key, value in sorted(spec.env.items())]
    if spec.as_array:
        lines.append('case "${SLURM_ARRAY_TASK_ID:-}" in')
        for index, env in enumerate(spec.bootstrap):
            exports = " ".join(f"{k}={q(v)}" for k, v in sorted(env.items()))
            lines.append(f"    {index}) export {exports} ;;")
        lines.append('    *) echo "interp_assets: no Pipes session for array task ${SLURM_ARRAY_TASK_ID:-unset}" >&2; exit 2 ;;')
        lines.append("esac")
    else:
        (env,) = spec.bootstrap
        lines += [f"export {k}={q(v)}" for k, v in sorted(env.items())]
    lines.append(f"exec {q(spec.python)} -m {WORKER_MODULE} {q(spec.task)}")
    return "\n".join(lines) + "\n"


def sbatch_argv(spec: BatchSpec, array: str | None) -> list[str]:
    """The sbatch command line of one submission (the script goes on stdin); ``array`` is the
    ``--array`` index list of the tasks submitted (all of them, or those resubmitted)."""
    job = spec.job
    stem = f"{spec.task}-%a" if array is not None else spec.task
    args = [
        "sbatch", "--parsable",
        f"--job-name=ia-{spec.task}",
        f"--output={spec.run_dir}/{stem}.out",
        f"--error={spec.run_dir}/{stem}.err",
        "--open-mode=append",  # a resubmission appends to the same log
        # SlurmCompute resubmits what a failed node stopped (counted, logged with the node, from the
        # checkpoint); SLURM's own requeue would rerun it silently under the same id.
        "--no-requeue",
        f"--chdir={spec.workdir}",
        f"--time={job['time']}",
        f"--mem={job['mem']}",
        f"--cpus-per-task={job['cpus']}",
        "--ntasks=1",
    ]
    if spec.signal_seconds:
        args.append(f"--signal=B:USR1@{spec.signal_seconds}")
    for name in ("partition", "account", "qos", "gres"):
        if job[name]:
            args.append(f"--{name}={job[name]}")
    if array is not None:
        limit = job["array_parallelism"]
        args.append(f"--array={array}" + (f"%{limit}" if limit else ""))
    return args


def over_ssh(argv: list[str], target: SshTarget) -> list[str]:
    """``argv`` run on the login node: the remote shell sees one string, so every argument is quoted."""
    login = f"{target.user}@{target.host}" if target.user else target.host
    command = ["ssh", "-p", str(target.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", "ConnectTimeout=15"]
    if target.key_file:
        command += ["-i", target.key_file, "-o", "IdentitiesOnly=yes"]
    if target.known_hosts_file:
        command += ["-o", f"UserKnownHostsFile={target.known_hosts_file}"]
    return [*command, "--", login, shlex.join(argv)]


def compress_indices(indices: list[int]) -> str:
    """0,1,2,3,5 -> '0-3,5' (sbatch --array syntax)."""
    ranges, start = [], None
    for i, value in enumerate(sorted(indices)):
        if start is None:
            start = prev = value
        elif value == prev + 1:
            prev = value
        else:
            ranges.append((start, prev))
            start = prev = value
        if i == len(indices) - 1:
            ranges.append((start, prev))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)
