"""Two real runs of the same partition at once, and what the tests read from them: which run held
the pool slot, when each one's step ran, and the stored artifact against its data version.

Overlap is forced, not hoped for: once the first run's step holds the pool slot, its worker
process is paused (SIGSTOP) until the second run is seen waiting, then resumed (SIGCONT). Only
processes descended from the test's own process tree are ever signalled.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from helpers import wait_for

POOL = "tiny.baselines"  # the pool of the tiny experiment's baselines (config.pool)
BLOCKED = f"Step blocked by limit for pool {POOL}"


def descendants(root_pid: int) -> list[int]:
    """Every living process below ``root_pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def worker_pids(root_pid: int, task: str) -> list[int]:
    """The interp_assets worker processes running ``task`` below ``root_pid``."""
    pids = []
    for pid in descendants(root_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"interp_assets.worker" in argv and task.encode() in argv:
            pids.append(pid)
    return pids


def slot_holders(instance: dg.DagsterInstance, pool: str = POOL) -> set[str]:
    """Run ids holding a slot of the pool now."""
    return {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots}


def run_events(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    return list(instance.all_logs(run_id))


def was_blocked(instance: dg.DagsterInstance, run_id: str, pool: str = POOL) -> bool:
    blocked = f"Step blocked by limit for pool {pool}"
    return any(entry.user_message.startswith(blocked) for entry in run_events(instance, run_id))


def step_window(instance: dg.DagsterInstance, run_id: str, step_key: str) -> tuple[float, float]:
    """(timestamp of STEP_START, timestamp of STEP_SUCCESS) of ``step_key`` in the run."""
    start = end = None
    for entry in run_events(instance, run_id):
        event = entry.dagster_event
        if event is None or event.step_key != step_key:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            start = entry.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            end = entry.timestamp
    assert start is not None and end is not None, f"step {step_key} of run {run_id} did not start and succeed"
    return start, end


@dataclass
class Paused:
    """The worker paused while the first run holds the slot (None when it had ended already)."""

    holder: str
    worker_pid: int | None


def pause_slot_holder(instance: dg.DagsterInstance, root_pid: int, run_ids: set[str], task: str,
                      pool: str = POOL) -> Paused:
    """Wait until one of ``run_ids`` holds the pool slot with its worker running, and SIGSTOP it."""

    def holder_with_worker() -> tuple[str, int] | None:
        holders = slot_holders(instance, pool) & run_ids
        pids = worker_pids(root_pid, task)
        return (holders.pop(), pids[0]) if holders and pids else None

    holder, pid = wait_for(f"a run of {sorted(run_ids)} to hold pool {POOL} with its worker", holder_with_worker)
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return Paused(holder, None)
    return Paused(holder, pid)


def resume(paused: Paused) -> None:
    if paused.worker_pid is not None:
        try:
            os.kill(paused.worker_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def assert_artifact_matches_latest_data_version(
    instance: dg.DagsterInstance, storage_root: Path, asset: str, partition: str, relpath: str, run_ids: set[str],
) -> str:
    """Every run in ``run_ids`` materialized the partition; the stored file is complete (parquet
    reads back whole), no temporary file is left beside it, and its sha256 is the data version
    that the latest materialization (and each of these runs) recorded."""
    import io

    import polars as pl

    from resources.storage import ArtifactStore

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(["tiny", asset]), asset_partitions=[partition]), limit=100,
    ).records
    by_run = {record.run_id: record.asset_materialization for record in records}
    assert run_ids <= set(by_run), f"runs {run_ids - set(by_run)} recorded no materialization of {asset} [{partition}]"
    latest = records[0].asset_materialization
    assert latest is not None
    data = ArtifactStore(str(storage_root)).read_bytes(relpath)
    digest = hashlib.sha256(data).hexdigest()
    assert latest.tags["dagster/data_version"] == digest
    # The same inputs give the same bytes: both runs recorded this version.
    assert {by_run[run_id].tags["dagster/data_version"] for run_id in run_ids} == {digest}
    assert pl.read_parquet(io.BytesIO(data)).height > 0
    path = storage_root / relpath
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name and p.name.startswith(f"{path.name}.tmp-")]
    assert not leftovers, f"temporary files left beside {path}: {leftovers}"
    return digest


def cli_runs_take_turns(instance: dg.DagsterInstance, home: Path, config_path: Path, storage_root: Path,
                        logs: Path, partition: str) -> tuple[str, str]:
    """Two real `dagster asset materialize` processes of baselines [partition] on the instance in
    ``home`` (prompts [partition] materialized already), the second started while the first one's
    step holds the pool with its worker paused. Asserts that the second one's step is blocked by
    the pool and starts only after the first one's has ended, that both runs succeed and the
    artifact matches the data version; returns (first run id, second run id)."""
    from helpers import PROJECT_ROOT

    env = {**os.environ, "DAGSTER_HOME": str(home), "INTERP_ASSETS_CONFIG": str(config_path)}
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
               "interp_assets.definitions", "--select", "tiny/baselines", "--partition", partition]
    before = {run.run_id for run in instance.get_runs()}

    def new_runs() -> set[str]:
        return {run.run_id for run in instance.get_runs()} - before

    def start(name: str) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    first = start("first")
    second = paused = None
    try:
        first_run = wait_for("the first run to be created", lambda: next(iter(new_runs()), None))
        # The first run's step holds the slot and its worker is paused there: the runs overlap.
        paused = pause_slot_holder(instance, first.pid, {first_run}, "baselines")
        second = start("second")
        second_run = wait_for("the second run to be created", lambda: next(iter(new_runs() - {first_run}), None))
        wait_for(f"'{BLOCKED}' in the second run's log", lambda: was_blocked(instance, second_run))
        assert slot_holders(instance) == {first_run}
    finally:
        if paused is not None:
            resume(paused)
        for process in (first, second):
            if process is not None:
                process.wait(timeout=600)

    for name, process in (("first", first), ("second", second)):
        assert process.returncode == 0, (logs / f"{name}.log").read_text(errors="replace")[-3000:]
    for run_id in (first_run, second_run):
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    # The second run's step started only after the first one's had ended.
    _, first_end = step_window(instance, first_run, "baselines")
    second_start, _ = step_window(instance, second_run, "baselines")
    assert second_start >= first_end
    assert not slot_holders(instance)
    assert_artifact_matches_latest_data_version(
        instance, storage_root, "baselines", partition, f"baselines/{partition}.parquet", {first_run, second_run})
    return first_run, second_run
