"""Following one run's SLURM job(s): submit, poll all of them with ONE status call per interval
(backing off), stream their logs into the run, resubmit what TIMEOUT, PREEMPTED or a failed node stopped, cancel
what is left when the step is interrupted, and explain every other end state."""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from resources.slurm.script import BatchSpec, batch_script, compress_indices, sbatch_argv
from resources.slurm.status import (
    EXPLAIN,
    RESUBMITTABLE,
    TERMINAL,
    UNREACHABLE,
    bigger_mem,
    exit_text,
    is_held,
    parse_sacct,
    parse_scontrol_exit_codes,
    parse_squeue,
    sacct_argv,
    squeue_argv,
)

JOBS_FILE = "jobs.txt"
"""Every job id a run's task submitted, one per line, in its run directory."""

if TYPE_CHECKING:
    from resources.slurm.resource import SlurmCompute


@dataclass
class Task:
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



class Follower:
    """Submits one run's job(s), polls them in one call per interval, resubmits, cancels."""

    def __init__(self, compute: SlurmCompute, context: dg.AssetExecutionContext, spec: BatchSpec,
                 tasks: list[Task]) -> None:
        self.compute, self.context, self.spec, self.tasks = compute, context, spec, tasks
        self.task, self.job, self.as_array = spec.task, spec.job, spec.as_array
        self.run_dir = Path(spec.run_dir)
        self.script = batch_script(spec)
        self.source = "squeue" if compute.status_source == "squeue" else "sacct"
        self.offsets: dict[Path, int] = {}
        self.submissions: list[str] = []
        self.first_submitted = time.time()
        self.unreachable_since: float | None = None  # monotonic time of the first failed status call in a row

    # ---- submit / cancel

    def submit(self, tasks: list[Task]) -> None:
        array = compress_indices([t.index for t in tasks if t.index is not None]) if self.as_array else None
        args = sbatch_argv(self.spec, array)
        done = self.compute.cluster_command(args, stdin=self.script)
        waited, pause = time.monotonic(), self.compute.poll_seconds
        # "connect failure": sbatch never reached slurmctld, so nothing was submitted and a retry
        # cannot submit twice. (A timeout after connecting could have, and is not retried.)
        while done.returncode != 0 and UNREACHABLE in done.stderr:
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
        with open(self.run_dir / JOBS_FILE, "a") as jobs:  # what release_run cancels if the run dies
            jobs.write(job_id + "\n")
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
                failed_nodes = sorted({t.info.get("node") or "?" for t in again if t.state in ("NODE_FAIL", "BOOT_FAIL")})
                if failed_nodes:
                    self.context.log.warning(f"[slurm] node(s) {', '.join(failed_nodes)} failed under "
                                             f"{', '.join(t.slurm_id for t in again)}")
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
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.first_submitted - 300))
            done = self.compute.cluster_command(sacct_argv(ids, since))
            if done.returncode == 0:
                rows = parse_sacct(done.stdout)
            elif "accounting storage is disabled" in done.stderr and self.compute.status_source == "auto":
                self.context.log.info("[slurm] sacct: accounting storage is disabled here; following jobs with squeue -t all")
                self.source = "squeue"
            else:
                self.status_failed("sacct", done)
                return
        if self.source == "squeue":
            done = self.compute.cluster_command(squeue_argv(ids))
            if done.returncode == 0:
                rows = parse_squeue(done.stdout)
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
            if is_held(row):
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

    def _log_path(self, t: Task, stream: str) -> Path:
        return self.run_dir / (f"{self.task}-{t.index}.{stream}" if t.index is not None else f"{self.task}.{stream}")

    def tail(self, t: Task, stream: str = "err", lines: int = 40) -> str:
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
            reason = EXPLAIN.get(t.state, "").format(mem=self.job["mem"], task=self.task, bigger=bigger_mem(self.job["mem"]),
                                                     node=t.info.get("node") or "node unknown")
            if t.state in RESUBMITTABLE:
                reason += f"; resubmitted {t.attempts - 1} time(s), max_resubmits={self.compute.max_resubmits}"
            parts.append(f"{t.label}: SLURM job {t.slurm_id} ended {t.state} ({exit_text(t.info.get('exit_code', ''))}) — {reason}\n"
                         f"--- stderr tail ({self._log_path(t, 'err')}) ---\n{self.tail(t)}")
        done = [t.label for t in self.tasks if t.state == "COMPLETED"]
        summary = (f"{len(failed)} of {len(self.tasks)} SLURM task(s) of {self.task} failed"
                   + (f"; finished: {', '.join(done)} (a retry skips what they published)" if done else ""))
        raise dg.Failure(description=summary + "\n\n" + "\n\n".join(parts),
                         metadata={**self.run_metadata(), "slurm/failed": [t.label for t in failed]})

    def fill_exit_codes(self, tasks: list[Task]) -> None:
        """squeue shows no exit code; ``scontrol show job`` does for as long as the controller keeps
        the job (MinJobAge): one call per job id (an array's tasks all come with its id)."""
        for job_id in sorted({t.job_id for t in tasks if t.job_id}):
            done = self.compute.cluster_command(["scontrol", "show", "job", "-o", job_id])
            if done.returncode != 0:
                continue
            codes = parse_scontrol_exit_codes(done.stdout)
            for t in tasks:
                if t.job_id == job_id and codes.get(t.key):
                    t.info["exit_code"] = codes[t.key]

    def task_metadata(self, t: Task) -> dict[str, Any]:
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
            # Run-level names: each partition's own slurm/job_id, node, ... come from partition_metadata().
            base = {"slurm/array_job_id": self.submissions[0] if self.submissions else "none",
                    "slurm/array_tasks": len(self.tasks),
                    "slurm/states": {t.label: t.state for t in self.tasks}}
        return {**base, "slurm/submissions": list(self.submissions), "slurm/status_source": self.source,
                "slurm/log_dir": dg.MetadataValue.path(str(self.run_dir))}

    def partition_metadata(self) -> dict[str, dict[str, Any]]:
        return {key: self.task_metadata(t) for t in self.tasks for key in t.partition_keys}
