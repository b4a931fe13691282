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
* End states: TIMEOUT, PREEMPTED, NODE_FAIL and BOOT_FAIL are resubmitted (only the affected tasks) up to
  ``max_resubmits`` times; the worker resumes from its last checkpoint (``--signal=B:USR1@N``
  reaches the ``exec``-ed worker, which checkpoints). Other end states fail with a clear message
  and the stderr tail. An interrupted step (run terminated) ``scancel``s its jobs.

Every value that reaches a shell or sbatch is validated (``check_settings()``: the error names the
field and the fix) and shell-quoted.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import dagster as dg

from interp_assets.config import ConfigError, ExperimentConfig, parse_config
from interp_assets.core.resource_model import slurm_mem, slurm_time
from resources.compute import PROJECT_ROOT, ComputeResource, WholeLineFileMessageReader
from resources.slurm.follower import JOBS_FILE, Follower, Task
from resources.slurm.script import BatchSpec, SshTarget, over_ssh
from resources.slurm.settings import (
    AUTO,
    SIGNAL_MARGIN_SECONDS,
    TASK_NAME,
    SlurmConfigError,
    SlurmJobSettings,
    check_settings,
    job_settings,
)


class SlurmCompute(ComputeResource):
    """Run worker tasks as SLURM batch jobs (see the module docstring)."""

    partition: str = ""
    """Partition (-p); empty: the cluster's default."""
    account: str = ""
    """Account to charge (-A); empty: your default account."""
    qos: str = ""
    """Quality of service (--qos); empty: the account's default."""
    gres: str = ""
    """Generic resources per node, e.g. ``gpu:1`` or ``gpu:a100:1``."""
    cpus: int = 1
    """CPUs per task (--cpus-per-task); the worker's torch uses as many threads."""
    mem: str = "4G"
    """Memory per node (--mem), e.g. ``16G``; ``auto``: the resource plan's host peak for the task × auto_safety_factor, in whole GiB."""
    time: str = "1:00:00"
    """Time limit (--time): M, M:S, H:M:S, D-H, D-H:M or D-H:M:S (SLURM rounds up to minutes); ``auto``: the plan's time for the task × auto_safety_factor, whole minutes."""
    array_parallelism: int = 0
    """At most this many array tasks at once (``--array=...%N``); 0: no limit."""
    array_tasks: list[str] = ["saes"]
    """Worker tasks whose layer ranges become one array job with one task per layer. Others
    (``activations``: one forward pass for all layers) stay one job for the whole range."""
    overrides: dict[str, SlurmJobSettings] = {}
    """Per worker task (``activations``, ``saes``, ...): job settings that differ."""
    auto_safety_factor: float = 1.5
    """``time: auto`` / ``mem: auto`` request the plan's figure (``python -m interp_assets.plan``) times this (≥ 1)."""
    auto_device: str = "a100-80gb"
    """The device the plan sizes ``auto`` jobs for: a100-40gb, a100-80gb, h100, h200 or cpu."""
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
    """Resubmit a task that ended TIMEOUT, PREEMPTED, NODE_FAIL or BOOT_FAIL at most this many times."""
    poll_seconds: float = 2.0
    """First interval between status polls; grows 1.5x while nothing changes."""
    max_poll_seconds: float = 30.0
    """Longest interval between status polls."""
    status_source: Literal["auto", "sacct", "squeue"] = "auto"
    """``auto``: sacct, falling back to ``squeue -t all`` when accounting storage is disabled."""
    ssh_host: str = ""
    """Submit on this login node over SSH; empty: run sbatch/squeue/... here."""
    ssh_user: str = ""
    """Login name on the login node; empty: your local user name (or ~/.ssh/config)."""
    ssh_port: int = 22
    """The login node's SSH port."""
    ssh_key_file: str = ""
    """Private key to log in with (absolute path); empty: your SSH agent or default keys."""
    ssh_known_hosts_file: str = ""
    """known_hosts with the login node's key (strict host key checking); empty: ~/.ssh/known_hosts."""
    command_timeout_seconds: float = 60.0
    """Longest wait for one sbatch/squeue/sacct/scancel call (a down controller blocks ~9 s)."""
    controller_grace_seconds: float = 600.0
    """How long the SLURM controller may stay unreachable (sbatch/squeue/sacct failing, e.g.
    ``Unable to contact slurm controller`` while slurmctld restarts) before the step fails; polls
    back off meanwhile. Running jobs are unaffected: slurmctld recovers them when it is back."""

    # ---- validation --------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The profile's values as a plain mapping (what the pure checks and renderers read)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def job_settings(self, task: str) -> dict[str, Any]:
        """This task's job settings: the defaults, with the task's overrides applied."""
        return job_settings(self.settings(), task)

    def check_settings(self) -> None:
        """Check every setting that reaches sbatch or a shell; raise SlurmConfigError naming it."""
        check_settings(self.settings())

    def resolved_job_settings(self, task: str, config: ExperimentConfig | None) -> dict[str, Any]:
        """This task's job settings with ``auto`` replaced by the resource plan's figure for one
        job of ``task`` on ``auto_device`` times ``auto_safety_factor`` (time in whole minutes, at
        least signal_seconds + the USR1 margin; memory in whole GiB). Explicit values are kept."""
        job = self.job_settings(task)
        if AUTO not in (job["time"], job["mem"]):
            return job
        field = f"overrides.{task}" if (self.overrides.get(task) and AUTO in
                                        (self.overrides[task].time, self.overrides[task].mem)) else ""
        where = f"SlurmCompute.{field + '.' if field else ''}{'time' if job['time'] == AUTO else 'mem'}"
        if config is None:
            raise SlurmConfigError(f"{where}: auto needs the experiment config to plan from; none was given "
                                   "(write an explicit value, or pass config=)")
        from interp_assets.plan import PlanError, task_requirements

        try:
            seconds, host_bytes = task_requirements(config, task, self.auto_device)
        except (PlanError, ConfigError) as error:
            raise SlurmConfigError(f"{where}: auto cannot be planned: {error}") from None
        if job["time"] == AUTO:
            floor = self.signal_seconds + SIGNAL_MARGIN_SECONDS if self.signal_seconds else 60
            job["time"] = slurm_time(seconds, self.auto_safety_factor, floor)
        if job["mem"] == AUTO:
            job["mem"] = slurm_mem(host_bytes, self.auto_safety_factor)
        return job

    # ---- running ------------------------------------------------------------------------------

    def run(
        self, context: dg.AssetExecutionContext, *, task: str, extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        self.check_settings()  # before anything reaches the cluster
        if not TASK_NAME.match(task):
            raise SlurmConfigError(f"worker task {task!r}: not a task name")
        keys = list(extras.get("partition_keys") or [])
        run_dir = Path(self.log_dir) / context.run.run_id / task
        run_dir.mkdir(parents=True, exist_ok=True)
        # What one array task does was decided by the asset (``task_groups``: one layer each, or a
        # group of streamed layers sharing a forward pass); tasks outside array_tasks run whole.
        groups = [list(g) for g in extras.get("task_groups") or [[key] for key in keys]] \
            if task in self.array_tasks else [keys]
        as_array = len(groups) > 1
        if as_array:
            tasks = [Task(i, group, f"{task}[{','.join(group)}]") for i, group in enumerate(groups)]
        else:
            tasks = [Task(None, keys, task)]

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
            spec = self.batch_spec(task, str(run_dir), [s.get_bootstrap_env_vars() for s in sessions], as_array,
                                   config=_payload_config(extras))
            follower = Follower(self, context, spec, tasks)
            _atomic_write(run_dir / "job.sh", follower.script)
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

    def batch_spec(self, task: str, run_dir: str, bootstrap: Sequence[dict[str, str]], as_array: bool,
                   config: ExperimentConfig | None = None) -> BatchSpec:
        """What a submission of ``task`` renders from (``script.batch_script`` / ``script.sbatch_argv``);
        ``config`` (the run's experiment config) sizes ``time: auto`` / ``mem: auto``."""
        python = self.python or ("python" if (self.venv or self.conda_env) else sys.executable)
        return BatchSpec(task=task, job=self.resolved_job_settings(task, config), run_dir=run_dir, workdir=self.workdir, python=python,
                         signal_seconds=self.signal_seconds, module_loads=tuple(self.module_loads), venv=self.venv,
                         conda_env=self.conda_env, env=dict(self.env), bootstrap=list(bootstrap), as_array=as_array)

    def release_run(self, run_id: str) -> list[str]:
        """scancel every job a dead run submitted (recorded in its run directory); a rerun resumes
        from their checkpoints instead of adopting them."""
        ids = sorted({line.strip() for path in (Path(self.log_dir) / run_id).glob(f"*/{JOBS_FILE}")
                      for line in path.read_text().splitlines() if line.strip().isdigit()})
        if not ids:
            return []
        done = self.cluster_command(["scancel", *ids])
        return [f"release_dead_runs: scancel {' '.join(ids)}: {'ok' if done.returncode == 0 else done.stderr.strip()}"]

    def cluster_command(self, argv: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command here or, with ``ssh_host``, on the login node."""
        command = argv
        if self.ssh_host:
            command = over_ssh(argv, SshTarget(self.ssh_host, self.ssh_user, self.ssh_port, self.ssh_key_file,
                                               self.ssh_known_hosts_file))
        try:
            return subprocess.run(command, input=stdin, capture_output=True, text=True,
                                  timeout=self.command_timeout_seconds)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 124, "", f"{argv[0]}: no answer in {self.command_timeout_seconds:.0f} s")
        except FileNotFoundError as error:
            return subprocess.CompletedProcess(command, 127, "", f"{command[0]}: {error.strerror} (is SLURM installed here?)")


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


def _payload_config(extras: dict[str, Any]) -> ExperimentConfig | None:
    """The run's experiment config, as the asset handed it to the worker (paths already resolved)."""
    payload = extras.get("config")
    return parse_config(payload, source=str(extras.get("config_source") or "<run payload>")) if payload else None


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
