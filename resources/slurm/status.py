"""What SLURM says about jobs, read as data: end-state sets, the squeue / sacct / scontrol
parsers, and the words a failure is explained in. Pure functions of command output (pinned on
literal output captured from a real cluster in ``tests/data/slurm/``)."""

from __future__ import annotations

import re
import signal

JobKey = tuple[str, str | None]
"""(job id — an array's own id for its tasks —, array index | None for a plain job | "pending-array")."""

TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED", "VANISHED", "HELD"}
RESUBMITTABLE = {"TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}
"""End states that say nothing about the job itself (its time ran out, a higher-priority job or a
failing node took its place): resubmitted, and the worker resumes from its last checkpoint."""
EXPLAIN = {
    "FAILED": "the worker exited with an error or was killed (see the exit code and the stderr tail)",
    "TIMEOUT": "the job ran past its --time limit",
    "OUT_OF_MEMORY": "the job ran out of memory (its cgroup's limit, --mem={mem}): raise `mem` for this task "
                     "(SlurmCompute.overrides.{task}.mem, e.g. {bigger}); it is not resubmitted, which would fail the same way",
    "NODE_FAIL": "the node it ran on failed ({node})",
    "PREEMPTED": "the job was preempted by a higher-priority job",
    "CANCELLED": "the job was cancelled (scancel, an administrator, or a failed dependency)",
    "BOOT_FAIL": "the node failed to boot ({node})",
    "DEADLINE": "the job missed its deadline",
    "VANISHED": "the job left the queue without a recorded end state (too long between polls?)",
    "HELD": ("SLURM requeued the job and holds it (seen after slurmctld restarts: a job whose batch step ended "
             "while it was down is requeued with `launch failed requeued held`); it was cancelled so that nothing "
             "runs unobserved. Outputs it published are complete (published atomically) and a rematerialization "
             "reuses them"),
}
UNREACHABLE = "Unable to contact slurm controller"
"""What every client command says while slurmctld is down or restarting."""

SACCT_FIELDS = "JobIDRaw,JobID,State,ExitCode,Elapsed,MaxRSS,NodeList,AllocTRES"
SQUEUE_FORMAT = "%F|%K|%T|%N|%M|%r|%b"

def sacct_argv(job_ids: list[str], since: str) -> list[str]:
    """ONE status call for every job of a run, limited to jobs from ``since`` on: where job ids
    were reset (a rebuilt controller), sacct keeps the older jobs of the same ids."""
    return ["sacct", "-n", "-P", "-S", since, "-j", ",".join(job_ids), "-o", SACCT_FIELDS]


def squeue_argv(job_ids: list[str]) -> list[str]:
    """The status call without accounting: ``-t all`` keeps finished jobs (for MinJobAge)."""
    return ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", SQUEUE_FORMAT]


_SACCT_ID = re.compile(r"^(\d+)(?:\+\d+)?(?:_(\d+|\[[^\]]*\]))?(?:\.(\S+))?$")
_SCONTROL_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_sacct(text: str) -> dict[JobKey, dict[str, str]]:
    """``sacct -n -P -o SACCT_FIELDS`` rows -> {job key: fields}; MaxRSS comes from the .batch
    step row, the state is its first word ("CANCELLED by 0" -> CANCELLED)."""
    rows: dict[JobKey, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 8:
            continue
        raw, job_id, state, exit_code, elapsed, max_rss, nodes, tres = parts[:8]
        match = _SACCT_ID.match(job_id)
        if not match:
            continue
        base, index, step = match.groups()
        if "+" in job_id.split(".")[0]:
            # A heterogeneous job's component (``10+1``): keyed by its own id, as squeue and
            # scontrol show it.
            base = raw.split(".")[0]
        if index is not None and index.startswith("["):
            index = "pending-array"
        row = rows.setdefault((base, index), {})
        if step:
            if max_rss:
                row["max_rss"] = max_rss
            continue
        gpus = [item for item in tres.split(",") if item.startswith("gres/gpu")]
        row.update(state=state.split()[0] if state else "UNKNOWN", exit_code=exit_code, elapsed=elapsed,
                   node=nodes if nodes not in ("", "None assigned") else "", gpu=",".join(gpus))
    return rows


def parse_squeue(text: str) -> dict[JobKey, dict[str, str]]:
    """``squeue -h -t all -o SQUEUE_FORMAT`` rows -> {job key: fields} (no exit codes: squeue has none)."""
    rows: dict[JobKey, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7:
            continue
        base, index, state, node, elapsed, reason, gres = parts[:7]
        if index in ("N/A", ""):
            key: JobKey = (base, None)
        elif index.isdigit():
            key = (base, index)
        else:
            key = (base, "pending-array")
        rows[key] = {"state": state.split()[0], "node": node, "elapsed": elapsed,
                     "gpu": gres if "gpu" in gres else "", "reason": reason}
    return rows


def parse_scontrol_exit_codes(text: str) -> dict[JobKey, str]:
    """``scontrol show job -o ID`` (one line per array task) -> {job key: ExitCode "status:signal"}."""
    codes: dict[JobKey, str] = {}
    for line in text.splitlines():
        fields = dict(_SCONTROL_FIELD.findall(line))
        if not fields:
            continue
        index = fields.get("ArrayTaskId")
        if index and not index.isdigit():
            index = "pending-array"  # a range of tasks not yet started, e.g. 2-3%2
        key = (fields.get("ArrayJobId") or fields.get("JobId") or "", index)
        codes[key] = fields.get("ExitCode", "")
    return codes


def is_held(row: dict[str, str]) -> bool:
    """A PENDING job SLURM holds (e.g. "launch failed requeued held" after slurmctld restarts):
    it would wait forever."""
    return row.get("state") == "PENDING" and "held" in row.get("reason", "").lower()


def exit_text(code: str) -> str:
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


def bigger_mem(mem: str) -> str:
    """A suggestion twice as large as a --mem value ("4G" -> "8G")."""
    return f"{int(mem[:-1] if mem[-1].isalpha() else mem) * 2}{mem[-1] if mem[-1].isalpha() else ''}"
