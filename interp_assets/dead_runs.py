"""Runs whose process is gone release what they hold.

Dagster's default run launcher cannot check a run's process (run monitoring only frees the pool
slots of runs that have ENDED), so a run killed outright — an OOM kill, a login node that
reboots, a closed tmux — would stay STARTED and keep its ``compute`` pool slot, and every heavy
step of every researcher would wait on a dead process. The ``release_dead_runs`` sensor (in the
daemon, every ``CHECK_SECONDS``) reads each STARTED run's process id from the run's own
first engine event that names a process ("Started process for run (pid: N)"); when no such process runs on this host any more (or
the pid now belongs to a younger process), the run is marked failed, its pool slots are freed at
once, and its SLURM jobs are cancelled (the compute backend's ``release_run``; a rerun resumes
from their checkpoints rather than adopting them). A local worker still running for the dead run is
stopped the same way. A run is judged only on the host its steps ran on (its ``HOST_TAG``, set by
its first step): a run of another login node, or one killed before its first step began, is left
alone.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

import dagster as dg

from resources.compute import ComputeResource

HOST_TAG = "interp-assets/host"
"""The host a run's steps run on (a pid means something only there)."""

CHECK_SECONDS = 15
"""How often dead runs are looked for: a dead run is failed, and its slot free, within about
twice this (a sensor tick is not exact) after its process died."""


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` of this host started (Unix time), or None when there is none."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
        with open("/proc/stat") as stat:
            boot = next(float(line.split()[1]) for line in stat if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    if fields[0] == "Z":  # a zombie has finished
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def run_process(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, when it was recorded) of a run's worker process: its first engine event with a pid
    ("Started process for run (pid: N)" when a launcher started it)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20).records
    for record in records:
        event = record.event_log_entry.dagster_event
        pid = event.engine_event_data.metadata.get("pid") if event and event.engine_event_data else None
        if pid is not None:
            return int(pid.value), record.event_log_entry.timestamp
    return None


def is_dead(pid: int, recorded_at: float) -> bool:
    started = process_started_at(pid)
    # A pid the kernel has given to a process started after the event is not the run's any more.
    return started is None or started > recorded_at + 5


def release_dead_runs_sensor() -> dg.SensorDefinition:
    @dg.sensor(name="release_dead_runs", minimum_interval_seconds=CHECK_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Fails runs whose process is gone, frees their pool slots, stops their workers and "
                           "cancels their SLURM jobs.")
    def release_dead_runs(context: dg.SensorEvaluationContext, compute: ComputeResource) -> dg.SkipReason:
        instance, host = context.instance, socket.gethostname()
        released: list[str] = json.loads(context.cursor) if context.cursor else []
        on_this_host = {HOST_TAG: host}
        # STARTED runs whose process is gone; and runs that ended in the last minutes with their
        # process gone (the code server that launched a run fails it when its process dies, but
        # leaves its slot held for run monitoring's minute, and its worker or SLURM jobs going).
        candidates = list(instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                                  tags=on_this_host)))
        candidates += instance.get_runs(filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED], tags=on_this_host,
            updated_after=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=15)))
        done_now = []
        for run in candidates:
            if run.run_id in released:
                continue
            found = run_process(instance, run.run_id)
            if found is None or not is_dead(*found):
                continue
            pid, recorded_at = found
            if run.status == dg.DagsterRunStatus.STARTED:
                instance.report_run_failed(run, (
                    f"The run's process (pid {pid}, started {time.ctime(recorded_at)}) is gone: killed outright (OOM, "
                    "reboot, closed terminal). Marked failed by release_dead_runs. Rematerialize: finished outputs "
                    "are reused and checkpoints resumed."))
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            lines = [f"release_dead_runs: the run's process (pid {pid}) is gone: its pool slots are free", *compute.release_run(run.run_id)]
            for line in lines:
                instance.report_engine_event(line, run)
            done_now.append(run.run_id)
            context.log.warning(f"run {run.run_id}: " + "; ".join(lines))
        context.update_cursor(json.dumps((released + done_now)[-500:]))
        return dg.SkipReason(f"released dead runs: {', '.join(done_now)}" if done_now else "no dead run")

    return release_dead_runs
