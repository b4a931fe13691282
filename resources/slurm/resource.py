"""SLURM compute: run worker tasks as batch jobs, talking Dagster Pipes over the shared filesystem.

``SlurmCompute.run`` renders a batch script, submits it with ``sbatch --parsable`` (on this
machine, or over SSH on a login node), and follows the job until it ends:

* Pipes: a context file + a message file per job (or per array task) under the run's log
  directory, which must be on a filesystem both the Dagster process and the compute nodes see.
  The worker's logs and results arrive in the Dagster run as it writes them.
* A layer range of an array task (``saes``) is ONE ``--array=<indices>%<limit>`` job, one layer
  per array task, each with its own Pipes session (a session accepts one materialization per
  asset); the results are combined into one materialization, per-layer metadata goes to each
  layer's partition. A failed task fails the range after the others finish; the retry is cheap
  because the worker skips layers whose outputs already exist for the same config.
* Status of all of a run's jobs: ONE ``sacct`` (or, without accounting, ``squeue -t all``) call
  per interval, with backoff. The stdout/stderr tail is streamed into the run log meanwhile.
* End states: TIMEOUT and PREEMPTED are resubmitted (only the affected tasks) up to
  ``max_resubmits`` times; the worker resumes from its last checkpoint (``--signal=B:USR1@N``
  reaches the ``exec``-ed worker, which checkpoints). Other end states fail with a clear message
  and the stderr tail. An interrupted step (run terminated) ``scancel``s its jobs.

Every value that reaches a shell or sbatch is validated (``check_settings()``: the error names the
field and the fix) and shell-quoted.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dagster as dg

from resources.compute import (
    PROJECT_ROOT,
    WORKER_MODULE,
    ComputeResource,
    WholeLineFileMessageReader,
    secret_names_in,
)

# Values SLURM accepts and a shell cannot misread. Partitions/accounts/QOS: SLURM names.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
_NAME_LIST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(,[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})*\Z")
_GRES = re.compile(r"^[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+){0,2}(,[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+){0,2})*\Z")
_MEM = re.compile(r"^[1-9][0-9]{0,9}[KMGT]?\Z")
_TIME = re.compile(r"^(?:(\d{1,3})-)?(\d{1,5})(?::(\d{1,2}))?(?::(\d{1,2}))?\Z")
_MODULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+/-]{0,127}\Z")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_COMMAND = re.compile(r"^[A-Za-z0-9_./+-]{1,4096}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1 and Unicode line breaks
_TASK = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")

TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED", "VANISHED", "HELD"}
RESUBMITTABLE = {"TIMEOUT", "PREEMPTED"}
_EXPLAIN = {
    "FAILED": "the worker exited with an error or was killed (see the exit code and the stderr tail)",
    "TIMEOUT": "the job ran past its --time limit",
    "OUT_OF_MEMORY": "the job ran out of memory (its cgroup's limit, --mem={mem}): raise `mem` for this task "
                     "(SlurmCompute.overrides.{task}.mem, e.g. {bigger}); it is not resubmitted, which would fail the same way",
    "NODE_FAIL": "the node it ran on failed",
    "PREEMPTED": "the job was preempted by a higher-priority job",
    "CANCELLED": "the job was cancelled (scancel, an administrator, or a failed dependency)",
    "BOOT_FAIL": "the node failed to boot",
    "DEADLINE": "the job missed its deadline",
    "VANISHED": "the job left the queue without a recorded end state (too long between polls?)",
    "HELD": ("SLURM requeued the job and holds it (seen after slurmctld restarts: a job whose batch step ended "
             "while it was down is requeued with `launch failed requeued held`); it was cancelled so that nothing "
             "runs unobserved. Outputs it published are complete (published atomically) and a rematerialization "
             "reuses them"),
}


class SlurmConfigError(ValueError):
    """An invalid SlurmCompute setting; the message names the field and the fix."""


def time_limit_seconds(value: str) -> int:
    """SLURM's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = _TIME.match(value)
    if not match:
        raise ValueError(value)
    days, a, b, c = match.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        h, m, s = (parts + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + m) * 60 + s
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


class SlurmJobSettings(dg.Config):
    """Per-task overrides of SlurmCompute's job settings (unset fields keep the defaults)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    cpus: int | None = None
    mem: str | None = None
    time: str | None = None
    array_parallelism: int | None = None


_JOB_FIELDS = ("partition", "account", "qos", "gres", "cpus", "mem", "time", "array_parallelism")


@dataclass
class _Task:
    """One unit of work: a plain job (index None) or one array task."""

    index: int | None
    partition_keys: list[str]
    label: str
    job_id: str = ""  # the array's (or plain job's) id of the latest submission
    state: str = "SUBMITTED"
    info: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    missing_polls: int = 0
    history: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.job_id, None if self.index is None else str(self.index))

    @property
    def slurm_id(self) -> str:
        return self.job_id if self.index is None else f"{self.job_id}_{self.index}"


class SlurmCompute(ComputeResource):
    """Run worker tasks as SLURM batch jobs (see the module docstring)."""

    partition: str = ""
    """Partition (-p); empty: the cluster's default."""
    account: str = ""
    """Account to charge (-A); empty: your default account."""
    qos: str = ""
    gres: str = ""
    """Generic resources per node, e.g. ``gpu:1`` or ``gpu:a100:1``."""
    cpus: int = 1
    """CPUs per task (--cpus-per-task); the worker's torch uses as many threads."""
    mem: str = "4G"
    """Memory per node (--mem), e.g. ``16G``."""
    time: str = "1:00:00"
    """Time limit (--time): M, M:S, H:M:S, D-H, D-H:M or D-H:M:S. SLURM rounds up to minutes."""
    array_parallelism: int = 0
    """At most this many array tasks at once (``--array=...%N``); 0: no limit."""
    array_tasks: list[str] = ["saes"]
    """Worker tasks whose layer ranges become one array job with one task per layer. Others
    (``activations``: one forward pass for all layers) stay one job for the whole range."""
    overrides: dict[str, SlurmJobSettings] = {}
    """Per worker task (``activations``, ``saes``, ...): job settings that differ."""
    module_loads: list[str] = []
    """Environment modules to load first, e.g. ``["CUDA/12.1.1", "Python/3.11.3"]``."""
    venv: str = ""
    """Absolute path of a virtualenv on the cluster to activate (``source <venv>/bin/activate``)."""
    conda_env: str = ""
    """A conda environment to activate instead (name or absolute path)."""
    python: str = ""
    """Interpreter on the cluster; empty: ``python`` when venv/conda is set, else this process's."""
    workdir: str = str(PROJECT_ROOT)
    """The project checkout as the compute nodes see it (cd + PYTHONPATH)."""
    env: dict[str, str] = {}
    """Extra environment for the worker."""
    log_dir: str = str(PROJECT_ROOT / "dagster_home" / "slurm")
    """Job scripts, logs and Pipes files go under <log_dir>/<run id>/; must be on a filesystem
    that the Dagster process and the compute nodes share."""
    signal_seconds: int = 90
    """Send USR1 this many seconds before the time limit, so the worker checkpoints."""
    max_resubmits: int = 2
    """Resubmit a task that ended TIMEOUT or PREEMPTED at most this many times."""
    poll_seconds: float = 2.0
    """First interval between status polls; grows 1.5x while nothing changes."""
    max_poll_seconds: float = 30.0
    status_source: Literal["auto", "sacct", "squeue"] = "auto"
    """``auto``: sacct, falling back to ``squeue -t all`` when accounting storage is disabled."""
    ssh_host: str = ""
    """Submit on this login node over SSH; empty: run sbatch/squeue/... here."""
    ssh_user: str = ""
    ssh_port: int = 22
    ssh_key_file: str = ""
    ssh_known_hosts_file: str = ""
    """known_hosts with the login node's key (strict host key checking); empty: ~/.ssh/known_hosts."""
    command_timeout_seconds: float = 60.0
    """Longest wait for one sbatch/squeue/sacct/scancel call (a down controller blocks ~9 s)."""
    controller_grace_seconds: float = 600.0
    """How long the SLURM controller may stay unreachable (sbatch/squeue/sacct failing, e.g.
    ``Unable to contact slurm controller`` while slurmctld restarts) before the step fails; polls
    back off meanwhile. Running jobs are unaffected: slurmctld recovers them when it is back."""

    # ---- validation --------------------------------------------------------------------------

    def job_settings(self, task: str) -> dict[str, Any]:
        """This task's job settings: the defaults, with the task's overrides applied."""
        settings = {name: getattr(self, name) for name in _JOB_FIELDS}
        override = self.overrides.get(task)
        if override is not None:
            settings.update({k: v for k, v in override.model_dump().items() if v is not None})
        return settings

    def check_settings(self) -> None:
        """Check every setting that reaches sbatch or a shell; raise SlurmConfigError naming it."""
        for task, override in self.overrides.items():
            if not _TASK.match(task):
                raise SlurmConfigError(f"SlurmCompute.overrides: {task!r} is not a worker task name (e.g. activations, saes)")
            self._validate_job(self.job_settings(task), f"overrides.{task}.")
        self._validate_job(self.job_settings(""), "")
        for i, module in enumerate(self.module_loads):
            _check(_MODULE.match(module), f"module_loads[{i}]", module,
                   "a module name such as CUDA/12.1.1 (letters, digits, _ . + / -)")
        if self.venv:
            _check_path(self.venv, "venv")
        if self.conda_env and not self.conda_env.startswith("/"):
            _check(_NAME.match(self.conda_env), "conda_env", self.conda_env, "an environment name or an absolute path")
        elif self.conda_env:
            _check_path(self.conda_env, "conda_env")
        if self.venv and self.conda_env:
            raise SlurmConfigError("SlurmCompute: set venv or conda_env, not both")
        if self.python:
            _check(_COMMAND.match(self.python), "python", self.python, "an interpreter path or name, e.g. python3.11")
        _check_path(self.workdir, "workdir")
        _check_path(self.log_dir, "log_dir")
        _check("%" not in self.log_dir, "log_dir", self.log_dir, "a path without '%' (sbatch expands it)")
        secrets = secret_names_in(self.env, "SlurmCompute.env")
        if secrets:
            raise SlurmConfigError(secrets)
        for key, value in self.env.items():
            _check(_ENV_KEY.match(key), "env", key, "environment variable names: letters, digits, _")
            _check(not _CONTROL.search(value), f"env.{key}", value, "a value without control characters")
        for task in self.array_tasks:
            _check(_TASK.match(task), "array_tasks", task, "worker task names, e.g. saes")
        _check(self.signal_seconds >= 0, "signal_seconds", self.signal_seconds, "a number of seconds ≥ 0")
        shortest, task = min((time_limit_seconds(self.job_settings(t)["time"]), t) for t in ["", *self.overrides])
        limit_field = f"SlurmCompute.overrides.{task}.time" if task else "SlurmCompute.time"
        _check(self.signal_seconds < shortest, "signal_seconds", self.signal_seconds,
               f"fewer seconds than the shortest time limit ({limit_field}={self.job_settings(task)['time']}, "
               f"{shortest} s), or the warning comes at the start; lower signal_seconds or raise that time")
        _check(0 <= self.max_resubmits <= 100, "max_resubmits", self.max_resubmits, "0 to 100")
        _check(0.05 <= self.poll_seconds <= self.max_poll_seconds, "poll_seconds", self.poll_seconds,
               "between 0.05 and max_poll_seconds")
        _check(0 <= self.controller_grace_seconds <= 7 * 86400, "controller_grace_seconds", self.controller_grace_seconds,
               "0 to 604800 seconds (how long an unreachable controller is waited for)")
        if self.ssh_host:
            _check(_HOST.match(self.ssh_host), "ssh_host", self.ssh_host, "a host name or address, e.g. login1.cd3.example.org")
            if self.ssh_user:
                _check(_USER.match(self.ssh_user), "ssh_user", self.ssh_user, "a login name")
            _check(1 <= self.ssh_port <= 65535, "ssh_port", self.ssh_port, "a TCP port")
            if self.ssh_key_file:
                _check_path(self.ssh_key_file, "ssh_key_file")
            if self.ssh_known_hosts_file:
                _check_path(self.ssh_known_hosts_file, "ssh_known_hosts_file")

    def _validate_job(self, job: dict[str, Any], prefix: str) -> None:
        _check(not job["partition"] or _NAME_LIST.match(job["partition"]), f"{prefix}partition", job["partition"],
               "a partition name (or comma-separated names), e.g. gpu_a100")
        _check(not job["account"] or _NAME.match(job["account"]), f"{prefix}account", job["account"],
               "an account name, e.g. rse-interp")
        _check(not job["qos"] or _NAME.match(job["qos"]), f"{prefix}qos", job["qos"], "a QOS name, e.g. normal")
        _check(not job["gres"] or _GRES.match(job["gres"]), f"{prefix}gres", job["gres"],
               "name[:type]:count, e.g. gpu:1 or gpu:a100:1")
        _check(isinstance(job["cpus"], int) and 1 <= job["cpus"] <= 4096, f"{prefix}cpus", job["cpus"], "1 to 4096")
        _check(isinstance(job["mem"], str) and _MEM.match(job["mem"]), f"{prefix}mem", job["mem"],
               "a size with an optional unit K, M, G or T, e.g. 16G")
        try:
            seconds = time_limit_seconds(job["time"])
        except ValueError:
            raise SlurmConfigError(
                f"SlurmCompute.{prefix}time: {job['time']!r} is not a SLURM time limit; use M, H:M:S or D-H:M:S, e.g. 2:00:00"
            ) from None
        _check(seconds >= 60, f"{prefix}time", job["time"], "at least one minute (SLURM limits are whole minutes)")
        _check(isinstance(job["array_parallelism"], int) and 0 <= job["array_parallelism"] <= 10000,
               f"{prefix}array_parallelism", job["array_parallelism"], "0 (no limit) to 10000")

    # ---- running ------------------------------------------------------------------------------

    def run(
        self, context: dg.AssetExecutionContext, *, task: str, extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        self.check_settings()  # before anything reaches the cluster
        if not _TASK.match(task):
            raise SlurmConfigError(f"worker task {task!r}: not a task name")
        job = self.job_settings(task)
        keys = list(extras.get("partition_keys") or [])
        run_dir = Path(self.log_dir) / context.run.run_id / task
        run_dir.mkdir(parents=True, exist_ok=True)
        from interp_assets.worker import array_task_groups  # the worker decides what one task trains

        groups = array_task_groups(task, keys, extras.get("config") or {}) if task in self.array_tasks else [keys]
        as_array = len(groups) > 1
        if as_array:
            tasks = [_Task(i, group, f"{task}[{','.join(group)}]") for i, group in enumerate(groups)]
        else:
            tasks = [_Task(None, keys, task)]

        with ExitStack() as stack:
            sessions = []
            for t in tasks:
                suffix = "" if t.index is None else f"-{t.index}"
                sessions.append(stack.enter_context(dg.open_pipes_session(
                    context,
                    dg.PipesFileContextInjector(str(run_dir / f"context{suffix}.json")),
                    WholeLineFileMessageReader(str(run_dir / f"messages{suffix}.jsonl")),
                    extras={**extras, "partition_keys": t.partition_keys},
                )))
            script = self.render_script(task, [s.get_bootstrap_env_vars() for s in sessions], as_array)
            _atomic_write(run_dir / "job.sh", script)
            follower = _Follower(self, context, task, job, run_dir, tasks, script, as_array)
            try:
                follower.submit(tasks)
                follower.follow()
                # The job has ended; give the shared filesystem a moment to show the last messages.
                finished = [s for s, t in zip(sessions, tasks, strict=True) if t.state == "COMPLETED"]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not all(s.message_handler.received_closed_message for s in finished):
                    time.sleep(0.2)
            except BaseException:
                follower.cancel_unfinished()
                raise
            finally:
                follower.stream_logs()
            follower.raise_for_failures()
            metadata = follower.run_metadata()
            partition_metadata = follower.partition_metadata() if as_array else {}
        return _SlurmInvocation(sessions, metadata, partition_metadata)

    def render_script(self, task: str, bootstrap: Sequence[dict[str, str]], as_array: bool) -> str:
        """The batch script: environment setup, then the worker ``exec``-ed so that SLURM's
        signals (USR1 before the time limit, TERM on cancel) reach it directly."""
        q = shlex.quote
        python = self.python or ("python" if (self.venv or self.conda_env) else _this_python())
        lines = [
            "#!/bin/bash",
            f"# interp_assets worker task {task}; submitted by SlurmCompute (options on the sbatch command line).",
            # Ignored (an ignored signal stays ignored across exec) until the worker installs its
            # handler: SLURM may send USR1 within a second of the start, and by default it kills.
            "trap '' USR1",
            "set -eo pipefail",
            'echo "interp_assets: job ${SLURM_JOB_ID} (array ${SLURM_ARRAY_JOB_ID:-none}_${SLURM_ARRAY_TASK_ID:-none}) '
            'on $(hostname) started $(date -Is)" >&2',
        ]
        lines += [f"module load {q(module)}" for module in self.module_loads]
        if self.venv:
            lines.append(f"source {q(self.venv + '/bin/activate')}")
        if self.conda_env:
            lines += ['eval "$(conda shell.bash hook)"', f"conda activate {q(self.conda_env)}"]
        lines += [
            f"cd {q(self.workdir)}",
            f'export PYTHONPATH={q(self.workdir)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
            "export INTERP_ASSETS_COMPUTE_BACKEND=slurm",
            f"export INTERP_ASSETS_TORCH_THREADS={int(self.job_settings(task)['cpus'])}",
        ]
        lines += [f"export {key}={q(value)}" for key, value in sorted(self.env.items())]
        if as_array:
            lines.append('case "${SLURM_ARRAY_TASK_ID:-}" in')
            for index, env in enumerate(bootstrap):
                exports = " ".join(f"{k}={q(v)}" for k, v in sorted(env.items()))
                lines.append(f"    {index}) export {exports} ;;")
            lines.append('    *) echo "interp_assets: no Pipes session for array task ${SLURM_ARRAY_TASK_ID:-unset}" >&2; exit 2 ;;')
            lines.append("esac")
        else:
            (env,) = bootstrap
            lines += [f"export {k}={q(v)}" for k, v in sorted(env.items())]
        lines.append(f"exec {q(python)} -m {WORKER_MODULE} {q(task)}")
        return "\n".join(lines) + "\n"

    def sbatch_args(self, task: str, job: dict[str, Any], run_dir: Path, array: str | None) -> list[str]:
        stem = f"{task}-%a" if array is not None else task
        args = [
            "sbatch", "--parsable",
            f"--job-name=ia-{task}",
            f"--output={run_dir}/{stem}.out",
            f"--error={run_dir}/{stem}.err",
            "--open-mode=append",  # a resubmission appends to the same log
            f"--chdir={self.workdir}",
            f"--time={job['time']}",
            f"--mem={job['mem']}",
            f"--cpus-per-task={job['cpus']}",
            "--ntasks=1",
        ]
        if self.signal_seconds:
            args.append(f"--signal=B:USR1@{self.signal_seconds}")
        for name in ("partition", "account", "qos", "gres"):
            if job[name]:
                args.append(f"--{name}={job[name]}")
        if array is not None:
            limit = job["array_parallelism"]
            args.append(f"--array={array}" + (f"%{limit}" if limit else ""))
        return args

    def cluster_command(self, argv: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command here or on the login node; over SSH the remote shell sees
        one string, so every argument is quoted."""
        if self.ssh_host:
            target = f"{self.ssh_user}@{self.ssh_host}" if self.ssh_user else self.ssh_host
            command = ["ssh", "-p", str(self.ssh_port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                       "-o", "ConnectTimeout=15"]
            if self.ssh_key_file:
                command += ["-i", self.ssh_key_file, "-o", "IdentitiesOnly=yes"]
            if self.ssh_known_hosts_file:
                command += ["-o", f"UserKnownHostsFile={self.ssh_known_hosts_file}"]
            command += ["--", target, shlex.join(argv)]
        else:
            command = argv
        try:
            return subprocess.run(command, input=stdin, capture_output=True, text=True,
                                  timeout=self.command_timeout_seconds)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 124, "", f"{argv[0]}: no answer in {self.command_timeout_seconds:.0f} s")
        except FileNotFoundError as error:
            return subprocess.CompletedProcess(command, 127, "", f"{command[0]}: {error.strerror} (is SLURM installed here?)")


class _Follower:
    """Submits one run's job(s), polls them in one call per interval, resubmits, cancels."""

    def __init__(self, compute: SlurmCompute, context: dg.AssetExecutionContext, task: str, job: dict[str, Any],
                 run_dir: Path, tasks: list[_Task], script: str, as_array: bool) -> None:
        self.compute, self.context, self.task, self.job = compute, context, task, job
        self.run_dir, self.tasks, self.script, self.as_array = run_dir, tasks, script, as_array
        self.source = "squeue" if compute.status_source == "squeue" else "sacct"
        self.offsets: dict[Path, int] = {}
        self.submissions: list[str] = []
        self.first_submitted = time.time()
        self.unreachable_since: float | None = None  # monotonic time of the first failed status call in a row

    # ---- submit / cancel

    def submit(self, tasks: list[_Task]) -> None:
        array = _compress([t.index for t in tasks if t.index is not None]) if self.as_array else None
        args = self.compute.sbatch_args(self.task, self.job, self.run_dir, array)
        done = self.compute.cluster_command(args, stdin=self.script)
        waited, pause = time.monotonic(), self.compute.poll_seconds
        # "connect failure": sbatch never reached slurmctld, so nothing was submitted and a retry
        # cannot submit twice. (A timeout after connecting could have, and is not retried.)
        while done.returncode != 0 and _UNREACHABLE in done.stderr:
            if time.monotonic() - waited > self.compute.controller_grace_seconds:
                raise dg.Failure(description=(
                    f"sbatch could not reach the SLURM controller for {time.monotonic() - waited:.0f} s "
                    f"(controller_grace_seconds={self.compute.controller_grace_seconds:g}); nothing was submitted:\n"
                    f"{done.stderr.strip()}\nCheck slurmctld (`scontrol ping`), then rematerialize."))
            self.context.log.warning(f"[slurm] sbatch: {done.stderr.strip()[:300]}; trying again in {pause:.0f} s")
            time.sleep(pause)
            pause = min(pause * 1.5, self.compute.max_poll_seconds)
            done = self.compute.cluster_command(args, stdin=self.script)
        if done.returncode != 0:
            raise dg.Failure(
                description=f"sbatch rejected the {self.task} job (exit {done.returncode}):\n{done.stderr.strip()}",
                metadata={"sbatch_command": shlex.join(args)},
            )
        job_id = done.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise dg.Failure(description=f"sbatch printed no job id: {done.stdout!r} {done.stderr!r}")
        for t in tasks:
            t.job_id, t.state, t.missing_polls = job_id, "PENDING", 0
            t.attempts += 1
        if not self.submissions:
            self.first_submitted = time.time()
        self.submissions.append(job_id)
        what = f"array job {job_id} (--array={array}{'%' + str(self.job['array_parallelism']) if self.job['array_parallelism'] else ''})" \
            if array is not None else f"job {job_id}"
        self.context.log.info(f"[slurm] submitted {self.task} as {what}; logs and Pipes files in {self.run_dir}")

    def cancel_unfinished(self) -> None:
        ids = sorted({t.job_id for t in self.tasks if t.job_id and t.state not in TERMINAL})
        if not ids:
            return
        done = self.compute.cluster_command(["scancel", *ids])
        self.context.log.warning(f"[slurm] step interrupted: scancel {' '.join(ids)} "
                                 f"({'ok' if done.returncode == 0 else done.stderr.strip()})")

    # ---- follow

    def follow(self) -> None:
        interval = self.compute.poll_seconds
        while True:
            before = [t.state for t in self.tasks]
            self.poll()
            self.stream_logs()
            for t in self.tasks:
                if t.state in TERMINAL and (not t.history or t.history[-1] != f"{t.slurm_id}:{t.state}"):
                    t.history.append(f"{t.slurm_id}:{t.state}")
                    self.context.log.info(f"[slurm] {t.label} ({t.slurm_id}) ended {t.state} on {t.info.get('node') or '?'}"
                                          f" after {t.info.get('elapsed') or '?'}")
            again = [t for t in self.tasks if t.state in RESUBMITTABLE and t.attempts <= self.compute.max_resubmits]
            if again:
                self.context.log.warning(
                    f"[slurm] {', '.join(t.label for t in again)} ended {again[0].state}: resubmitting "
                    f"(attempt {again[0].attempts + 1} of {self.compute.max_resubmits + 1}); the worker resumes from its checkpoint")
                self.submit(again)
            if all(t.state in TERMINAL for t in self.tasks):
                return
            changed = before != [t.state for t in self.tasks]
            interval = self.compute.poll_seconds if changed else min(interval * 1.5, self.compute.max_poll_seconds)
            time.sleep(interval)

    def poll(self) -> None:
        """ONE status call for every job of this run."""
        ids = sorted({t.job_id for t in self.tasks if t.state not in TERMINAL})
        rows = None
        if self.source == "sacct":
            # Only jobs from around this run's first submission: where job ids were reset (a
            # rebuilt controller), sacct keeps the older jobs of the same ids and would report those.
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.first_submitted - 300))
            done = self.compute.cluster_command(
                ["sacct", "-n", "-P", "-S", since, "-j", ",".join(ids),
                 "-o", "JobIDRaw,JobID,State,ExitCode,Elapsed,MaxRSS,NodeList,AllocTRES"])
            if done.returncode == 0:
                rows = _parse_sacct(done.stdout)
            elif "accounting storage is disabled" in done.stderr and self.compute.status_source == "auto":
                self.context.log.info("[slurm] sacct: accounting storage is disabled here; following jobs with squeue -t all")
                self.source = "squeue"
            else:
                self.status_failed("sacct", done)
                return
        if self.source == "squeue":
            done = self.compute.cluster_command(
                ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%F|%K|%T|%N|%M|%r|%b"])
            if done.returncode == 0:
                rows = _parse_squeue(done.stdout)
            elif "Invalid job id" in done.stderr:
                rows = {}  # every id aged out of the controller (MinJobAge)
            else:
                self.status_failed("squeue", done)
                return
        assert rows is not None
        if self.unreachable_since is not None:
            self.context.log.info(f"[slurm] {self.source} answers again after {time.monotonic() - self.unreachable_since:.0f} s; "
                                  "the controller kept the jobs")
            self.unreachable_since = None
        for t in self.tasks:
            if t.state in TERMINAL:
                continue
            row = rows.get(t.key) or (rows.get((t.job_id, "pending-array")) if t.index is not None else None)
            if row is None:
                t.missing_polls += 1
                # Seen before, now gone for a while: it ended long enough ago to age out.
                if t.state not in ("PENDING", "SUBMITTED") and t.missing_polls >= 5:
                    t.state = "VANISHED"
                continue
            t.missing_polls = 0
            t.info.update({k: v for k, v in row.items() if v and k != "state"})
            t.state = row["state"]
            if t.state == "PENDING" and "held" in row.get("reason", "").lower():
                # e.g. "launch failed requeued held": after slurmctld restarts, a job whose batch
                # step ended while it was down can be requeued and held, and would wait forever.
                t.state = "HELD"

    def status_failed(self, command: str, done: subprocess.CompletedProcess[str]) -> None:
        """A failed status call (a restarting slurmctld: ``Unable to contact slurm controller``):
        keep polling, with backoff, for ``controller_grace_seconds``, then fail the step clearly."""
        now = time.monotonic()
        error = done.stderr.strip()[:500] or f"exit {done.returncode}"
        if self.unreachable_since is None:
            self.unreachable_since = now
        down = now - self.unreachable_since
        grace = self.compute.controller_grace_seconds
        if down >= grace:
            ids = sorted({t.slurm_id for t in self.tasks if t.state not in TERMINAL})
            raise dg.Failure(description=(
                f"the SLURM controller did not answer {command} for {down:.0f} s (controller_grace_seconds={grace:g}); "
                f"last error: {error}\nJob(s) {', '.join(ids)} may still be running and will publish their results "
                "atomically if they finish: check `scontrol ping` and `squeue -t all -j <id>` once slurmctld is back, "
                "scancel them or let them finish, then rematerialize (finished outputs are reused, partial ones never are)."),
                metadata={**self.run_metadata(), "slurm/unreachable_seconds": round(down, 1)})
        self.context.log.warning(f"[slurm] {command} failed (exit {done.returncode}): {error}; the controller may be "
                                 f"restarting: polling again with backoff ({down:.0f} of {grace:g} s grace used)")

    def stream_logs(self) -> None:
        """Forward new lines of the jobs' stdout/stderr into the run log."""
        for t in self.tasks:
            for stream in ("out", "err"):
                path = self._log_path(t, stream)
                try:
                    with open(path, "rb") as f:
                        f.seek(self.offsets.get(path, 0))
                        data = f.read(1 << 20)
                except OSError:
                    continue
                complete = data.rfind(b"\n") + 1
                if not complete:
                    continue
                self.offsets[path] = self.offsets.get(path, 0) + complete
                lines = data[:complete].decode(errors="replace").splitlines()
                for line in lines[-200:]:
                    self.context.log.info(f"[slurm {t.label} {stream}] {line}")

    def _log_path(self, t: _Task, stream: str) -> Path:
        return self.run_dir / (f"{self.task}-{t.index}.{stream}" if t.index is not None else f"{self.task}.{stream}")

    def tail(self, t: _Task, stream: str = "err", lines: int = 40) -> str:
        try:
            text = self._log_path(t, stream).read_text(errors="replace")
        except OSError:
            return f"(no {stream} log at {self._log_path(t, stream)})"
        return "\n".join(text.splitlines()[-lines:])

    # ---- results

    def raise_for_failures(self) -> None:
        failed = [t for t in self.tasks if t.state != "COMPLETED"]
        if not failed:
            return
        held = sorted({t.slurm_id for t in failed if t.state == "HELD"})
        if held:
            done = self.compute.cluster_command(["scancel", *held])
            self.context.log.warning(f"[slurm] held job(s) {' '.join(held)}: scancel "
                                     f"({'ok' if done.returncode == 0 else done.stderr.strip()})")
        self.fill_exit_codes([t for t in failed if not t.info.get("exit_code")])
        parts = []
        for t in failed:
            reason = _EXPLAIN.get(t.state, "").format(mem=self.job["mem"], task=self.task, bigger=_bigger(self.job["mem"]))
            if t.state in RESUBMITTABLE:
                reason += f"; resubmitted {t.attempts - 1} time(s), max_resubmits={self.compute.max_resubmits}"
            parts.append(f"{t.label}: SLURM job {t.slurm_id} ended {t.state} ({_exit_text(t.info.get('exit_code', ''))}) — {reason}\n"
                         f"--- stderr tail ({self._log_path(t, 'err')}) ---\n{self.tail(t)}")
        done = [t.label for t in self.tasks if t.state == "COMPLETED"]
        summary = (f"{len(failed)} of {len(self.tasks)} SLURM task(s) of {self.task} failed"
                   + (f"; finished: {', '.join(done)} (a retry skips what they published)" if done else ""))
        raise dg.Failure(description=summary + "\n\n" + "\n\n".join(parts),
                         metadata={**self.run_metadata(), "slurm/failed": [t.label for t in failed]})

    def fill_exit_codes(self, tasks: list[_Task]) -> None:
        """squeue shows no exit code; ``scontrol show job`` does for as long as the controller keeps
        the job (MinJobAge): one call per job id (an array's tasks all come with its id)."""
        for job_id in sorted({t.job_id for t in tasks if t.job_id}):
            done = self.compute.cluster_command(["scontrol", "show", "job", "-o", job_id])
            if done.returncode != 0:
                continue
            codes = {}
            for line in done.stdout.splitlines():
                fields = dict(_SCONTROL_FIELD.findall(line))
                index = fields.get("ArrayTaskId")
                key = (fields.get("ArrayJobId") or fields.get("JobId"), index if index and index.isdigit() else None)
                codes[key] = fields.get("ExitCode", "")
            for t in tasks:
                if t.job_id == job_id and codes.get(t.key):
                    t.info["exit_code"] = codes[t.key]

    def task_metadata(self, t: _Task) -> dict[str, Any]:
        gpu = t.info.get("gpu") or self.job["gres"] or "none"
        return {
            "slurm/job_id": t.slurm_id,
            "slurm/array_index": -1 if t.index is None else t.index,
            "slurm/node": t.info.get("node", "unknown"),
            "slurm/elapsed": t.info.get("elapsed", "unknown"),
            "slurm/max_rss": t.info.get("max_rss") or ("unknown" if self.source == "sacct" else "n/a (no accounting)"),
            "slurm/state": t.state,
            "slurm/gpu": gpu,
            "slurm/attempts": t.attempts,
        }

    def run_metadata(self) -> dict[str, Any]:
        if not self.as_array:
            base = self.task_metadata(self.tasks[0])
        else:
            base = {"slurm/job_id": self.submissions[0] if self.submissions else "none",
                    "slurm/array_tasks": len(self.tasks),
                    "slurm/states": {t.label: t.state for t in self.tasks}}
        return {**base, "slurm/submissions": list(self.submissions), "slurm/status_source": self.source,
                "slurm/log_dir": dg.MetadataValue.path(str(self.run_dir))}

    def partition_metadata(self) -> dict[str, dict[str, Any]]:
        return {key: self.task_metadata(t) for t in self.tasks for key in t.partition_keys}


class _SlurmInvocation(dg.PipesClientCompletedInvocation):
    """One completed invocation over the Pipes sessions of a run's array tasks: their
    materializations of the same asset are combined into one, per-task SLURM metadata is
    added to the custom messages that carry per-partition metadata."""

    def __init__(self, sessions: list[dg.PipesSession], metadata: dict[str, Any],
                 partition_metadata: dict[str, dict[str, Any]]) -> None:
        super().__init__(sessions[0], metadata=metadata)
        self._sessions = sessions
        self._partition_metadata = partition_metadata

    def _reported(self, session: dg.PipesSession) -> list[Any]:
        """What one session's worker reported, the LAST report per asset only: SLURM may run a job
        again after it reported (requeued after a controller or node fault); the rerun finds the
        published outputs and reports them once more."""
        reported = list(session.get_reported_results())
        keys = [r.asset_key if isinstance(r, dg.MaterializeResult) else None for r in reported]
        latest = [r for i, r in enumerate(reported) if keys[i] is None or keys[i] not in keys[i + 1:]]
        if len(latest) < len(reported):
            session.context.log.warning(f"[slurm] the job reported {len(reported)} results for {len(latest)} asset(s): "
                                        "SLURM ran it again after it reported (requeued after a fault); the last report counts")
        return latest

    def get_results(self, *, implicit_materializations: bool = True) -> Sequence[Any]:
        if len(self._sessions) == 1:
            reported = self._reported(self._sessions[0])
            if len(reported) == len(self._sessions[0].get_reported_results()):
                return super().get_results(implicit_materializations=implicit_materializations)
            results = [dg.MaterializeResult(asset_key=r.asset_key, metadata={**dict(r.metadata or {}), **self.metadata},
                                            data_version=r.data_version, check_results=r.check_results, tags=r.tags)
                       if isinstance(r, dg.MaterializeResult) else r for r in reported]
            done = {r.asset_key for r in results if isinstance(r, dg.MaterializeResult)}
            if implicit_materializations:
                results += [dg.MaterializeResult(asset_key=key, metadata=self.metadata)
                            for key in self._sessions[0].context.selected_asset_keys if key not in done]
            return results
        reported = [r for s in self._sessions for r in self._reported(s)]
        materializations: dict[dg.AssetKey, list[dg.MaterializeResult]] = {}
        others = []
        for result in reported:
            if isinstance(result, dg.MaterializeResult) and result.asset_key is not None:
                materializations.setdefault(result.asset_key, []).append(result)
            else:
                others.append(result)
        combined = [
            dg.MaterializeResult(
                asset_key=key,
                metadata={**_merge_metadata([dict(r.metadata or {}) for r in results]), **self.metadata},
                data_version=_combined_version([r.data_version.value for r in results if r.data_version]),
            )
            for key, results in materializations.items()
        ]
        if implicit_materializations:
            combined += [dg.MaterializeResult(asset_key=key, metadata=self.metadata)
                         for key in self._sessions[0].context.selected_asset_keys if key not in materializations]
        return [*combined, *others]

    def get_custom_messages(self) -> Sequence[Any]:
        # Per session, the last message of each shape (a job SLURM ran twice sends its per-partition
        # metadata twice).
        messages = []
        for session in self._sessions:
            shapes = [tuple(sorted(m)) if isinstance(m, dict) else None for m in session.get_custom_messages()]
            messages += [m for i, m in enumerate(session.get_custom_messages())
                         if shapes[i] is None or shapes[i] not in shapes[i + 1:]]
        if self._partition_metadata:
            messages.append({"partitions": self._partition_metadata})
        return messages


# ---- helpers ------------------------------------------------------------------------------------


def _check(ok: Any, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise SlurmConfigError(f"SlurmCompute.{name}: {value!r} is not allowed; expected {expected}")


def _check_path(value: str, name: str) -> None:
    _check(value.startswith("/") and not _CONTROL.search(value), name, value,
           "an absolute path without control characters")


def _this_python() -> str:
    import sys

    return sys.executable


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


_UNREACHABLE = "Unable to contact slurm controller"


def _bigger(mem: str) -> str:
    """A suggestion twice as large as a --mem value ("4G" -> "8G")."""
    return f"{int(mem[:-1] if mem[-1].isalpha() else mem) * 2}{mem[-1] if mem[-1].isalpha() else ''}"


def _compress(indices: list[int]) -> str:
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


_SCONTROL_FIELD = re.compile(r"(\w+)=(\S*)")


def _exit_text(code: str) -> str:
    """SLURM's ``status:signal`` exit code, said in words: ``0:10`` -> killed by signal 10 (SIGUSR1)."""
    status, _, number = code.partition(":")
    if not (status.isdigit() and number.isdigit()):
        return "exit code unknown"
    if int(number):
        try:
            name = signal.Signals(int(number)).name
        except ValueError:
            name = "?"
        return f"exit code {code}: killed by signal {number} ({name})"
    return f"exit code {code}"


_SACCT_ID = re.compile(r"^(\d+)(?:_(\d+|\[[^\]]*\]))?(?:\.(\S+))?$")


def _parse_sacct(text: str) -> dict[tuple[str, str | None], dict[str, str]]:
    """sacct -P rows -> {(job id, array index | None | 'pending-array'): fields}; MaxRSS comes
    from the .batch step row."""
    rows: dict[tuple[str, str | None], dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 8:
            continue
        _raw, job_id, state, exit_code, elapsed, max_rss, nodes, tres = parts[:8]
        match = _SACCT_ID.match(job_id)
        if not match:
            continue
        base, index, step = match.groups()
        if index is not None and index.startswith("["):
            index = "pending-array"
        key = (base, index)
        row = rows.setdefault(key, {})
        if step:
            if max_rss:
                row["max_rss"] = max_rss
            continue
        gpus = [item for item in tres.split(",") if item.startswith("gres/gpu")]
        row.update(state=state.split()[0] if state else "UNKNOWN", exit_code=exit_code, elapsed=elapsed,
                   node=nodes if nodes not in ("", "None assigned") else "", gpu=",".join(gpus))
    return rows


def _parse_squeue(text: str) -> dict[tuple[str, str | None], dict[str, str]]:
    """squeue -o '%F|%K|%T|%N|%M|%r|%b' rows -> {(array job id, index | None | 'pending-array'): fields}."""
    rows: dict[tuple[str, str | None], dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7:
            continue
        base, index, state, node, elapsed, _reason, gres = parts[:7]
        if index in ("N/A", ""):
            key: tuple[str, str | None] = (base, None)
        elif index.isdigit():
            key = (base, index)
        else:
            key = (base, "pending-array")
        gpu = gres if "gpu" in gres else ""
        rows[key] = {"state": state.split()[0], "node": node, "elapsed": elapsed, "gpu": gpu, "reason": _reason}
    return rows


def _merge_metadata(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the array tasks' materialization metadata: per-layer JSON mappings are united,
    lists concatenated, equal values kept, differing scalars listed."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for item in items for k in item):
        values = [item[key] for item in items if key in item]
        raw = [getattr(v, "value", v) for v in values]
        if all(isinstance(r, dict) for r in raw):
            union: dict[str, Any] = {}
            for r in raw:
                union.update(r)
            merged[key] = dg.MetadataValue.json(union)
        elif all(isinstance(r, list) for r in raw):
            merged[key] = dg.MetadataValue.json([x for r in raw for x in r])
        elif all(r == raw[0] for r in raw):
            merged[key] = values[0]
        else:
            try:
                merged[key] = dg.MetadataValue.json(json.loads(json.dumps(raw)))
            except (TypeError, ValueError):
                merged[key] = dg.MetadataValue.text(", ".join(map(str, raw)))
    return merged


def _combined_version(versions: list[str]) -> dg.DataVersion | None:
    # Sorted: the same outputs give the same version whatever order the tasks finished in.
    if not versions:
        return None
    return dg.DataVersion(hashlib.sha256(json.dumps(sorted(versions)).encode()).hexdigest())
