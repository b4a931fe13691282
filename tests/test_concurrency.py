"""Two runs materializing the same partition at once on the dev instance (dagster_home/dagster.yaml,
SQLite): the heavy step of the second waits for the pool slot ("Step blocked by limit for pool
compute") and runs only after the first one's step has ended; both succeed, and the stored
artifact is complete, with the sha256 that both runs recorded as its data version.

The runs are two real `dagster asset materialize` processes, as two researchers (or a researcher
and the automation sensor) would start on one machine: they bypass the run queue, so it is the
pool, enforced per step through the instance's concurrency tables, that keeps them apart. The
same guarantee on the lab's PostgreSQL instance, through the daemon's queue: test_postgres.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from concurrent_runs import (
    BLOCKED,
    assert_artifact_matches_latest_data_version,
    pause_slot_holder,
    resume,
    slot_holders,
    step_window,
    wait_for,
    was_blocked,
)
from helpers import PROJECT_ROOT, seed_tiny_model, write_config

from interp_assets.definitions import build_definitions

pytestmark = pytest.mark.slow

BEHAVIOUR = "ioi"


def test_two_cli_runs_of_one_partition_on_the_sqlite_dev_instance_take_turns(
    tmp_path: Path, tiny_model_storage: Path,
) -> None:
    config_path = write_config(tmp_path)
    seed_tiny_model(tmp_path / "storage", tiny_model_storage)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.supports_global_concurrency_limits
        defs = build_definitions(config_path)
        for selection, partition in ((["language_model"], None), (["prompts"], BEHAVIOUR)):
            dg.materialize(list(defs.assets), selection=selection, partition_key=partition, instance=instance,
                           resources=dict(defs.resources))

        env = {**os.environ, "DAGSTER_HOME": str(home), "INTERP_ASSETS_CONFIG": str(config_path)}
        command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                   "interp_assets.definitions", "--select", "baselines", "--partition", BEHAVIOUR]
        before = {run.run_id for run in instance.get_runs()}

        def start(name: str) -> subprocess.Popen:
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

        first = start("first")
        paused = None
        second = None
        try:
            # The first run's step holds the slot and its worker is paused there: the runs overlap.
            paused = _pause_first(instance, first, before)
            second = start("second")
            second_run = wait_for(lambda: next(iter(_new_runs(instance, before) - {paused.holder}), None),
                                  "the second run to be created")
            wait_for(lambda: was_blocked(instance, second_run), f"'{BLOCKED}' in the second run's log")
            assert slot_holders(instance) == {paused.holder}
        finally:
            if paused is not None:
                resume(paused)
            for process in (first, second):
                if process is not None:
                    process.wait(timeout=600)

        logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:] for name in ("first", "second")}
        assert first.returncode == 0, logs["first"]
        assert second.returncode == 0, logs["second"]
        first_run = paused.holder
        for run_id in (first_run, second_run):
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        # The second run's step started only after the first one's had ended.
        _, first_end = step_window(instance, first_run, "baselines")
        second_start, _ = step_window(instance, second_run, "baselines")
        assert second_start >= first_end
        assert not slot_holders(instance)
        assert_artifact_matches_latest_data_version(
            instance, tmp_path / "storage", "baselines", BEHAVIOUR, f"baselines/{BEHAVIOUR}.parquet",
            {first_run, second_run},
        )


def _new_runs(instance: dg.DagsterInstance, before: set[str]) -> set[str]:
    return {run.run_id for run in instance.get_runs()} - before


def _pause_first(instance: dg.DagsterInstance, first: subprocess.Popen, before: set[str]):  # noqa: ANN202
    run_id = wait_for(lambda: next(iter(_new_runs(instance, before)), None), "the first run to be created")
    return pause_slot_holder(instance, first.pid, {run_id}, "baselines")
