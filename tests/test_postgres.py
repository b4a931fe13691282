"""The lab deployment: the Dagster instance of configs/dagster-postgres.yaml on a real PostgreSQL
server that the tests start on loopback with scripts/postgres-local.sh (Debian's postgresql,
installed when absent; as root the server runs as the `postgres` user).

- materializations through a DagsterInstance on that server: runs, events, materializations and
  data versions are read back through the instance and with psql from PostgreSQL's own tables,
  and the database password appears in none of them;
- the login node as the lab runs it: a real webserver + daemon (`dagster dev`) on that instance,
  two runs of the same partition launched at once through GraphQL, as two researchers clicking
  Materialize: one step waits for the compute pool while the other runs (forced: the first
  one's worker is paused until the second is seen waiting), both succeed with their events in
  PostgreSQL, and the stored artifact's sha256 is the data version both recorded.

The tests skip, saying why, only when the server cannot start; under CI (CI=true) that fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from concurrent_runs import (
    assert_artifact_matches_latest_data_version,
    cli_runs_take_turns,
    pause_slot_holder,
    resume,
    slot_holders,
    step_window,
    wait_for,
    was_blocked,
)
from dagster_dev import LAUNCH_RUN, LOCATION, REPOSITORY, DagsterDev, free_port, start_dagster_dev, wait_for_run
from helpers import start_local_server, PROJECT_ROOT, asset_key, in_experiment, seed_tiny_model, write_config

from interp_assets.definitions import build_definitions

pytestmark = pytest.mark.slow

SCRIPT = PROJECT_ROOT / "scripts" / "postgres-local.sh"
INSTANCE_YAML = PROJECT_ROOT / "configs" / "dagster-postgres.yaml"


@dataclass
class Postgres:
    env: dict[str, str]  # the DAGSTER_PG_* variables
    psql_bin: str

    def query(self, sql: str) -> list[list[str]]:
        """Rows of ``sql`` through the real psql client, over TCP with the Dagster role's password."""
        done = subprocess.run(
            [self.psql_bin, "-h", self.env["DAGSTER_PG_HOST"], "-p", self.env["DAGSTER_PG_PORT"],
             "-U", self.env["DAGSTER_PG_USERNAME"], "-d", self.env["DAGSTER_PG_DB"],
             "-v", "ON_ERROR_STOP=1", "-AtF", "\t", "-c", sql],
            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": self.env["DAGSTER_PG_PASSWORD"]},
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return [line.split("\t") for line in done.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    # Not under pytest's temp root: that folder is private to root, and the server runs as postgres.
    state = Path(tempfile.mkdtemp(prefix="interp-assets-pg-", dir="/tmp"))
    env = {**os.environ, "INTERP_ASSETS_PG_DIR": str(state), "INTERP_ASSETS_PG_PORT": str(free_port())}
    try:
        exports = start_local_server(SCRIPT, env, "PostgreSQL")
        psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
        yield Postgres(exports, str(psql))
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class Lab:
    pg: Postgres
    home: Path
    config_path: Path
    storage: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions


@pytest.fixture(scope="module")
def lab(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory, tiny_model_storage: Path) -> Iterator[Lab]:
    """$DAGSTER_HOME holding configs/dagster-postgres.yaml, the DAGSTER_PG_* variables set as a
    researcher's shell would, and the model and the ioi prompts materialized on that instance."""
    root = tmp_path_factory.mktemp("lab")
    config_path = write_config(root)
    seed_tiny_model(root / "storage", tiny_model_storage)
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in postgres.env.items():
            patch.setenv(key, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            defs = build_definitions(config_path)
            lab = Lab(postgres, home, config_path, root / "storage", instance, defs)
            for selection, partition in ((["language_model"], None), (["prompts"], "ioi")):
                assert materialize(lab, selection, partition).success
            yield lab


def materialize(lab: Lab, selection: list[str], partition: str | None) -> dg.ExecuteInProcessResult:
    return dg.materialize(list(lab.defs.assets), selection=in_experiment(selection), partition_key=partition,
                          instance=lab.instance, resources=dict(lab.defs.resources))


def test_runs_events_and_data_versions_are_stored_in_postgres(lab: Lab) -> None:
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    instance = lab.instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert instance.event_log_storage.supports_global_concurrency_limits

    result = materialize(lab, ["prompts", "baselines"], "capitals")
    assert result.success
    run_id = result.run_id
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    digests = {
        asset: assert_artifact_matches_latest_data_version(
            instance, lab.storage, asset, "capitals", f"{asset}/capitals.parquet", {run_id})
        for asset in ("prompts", "baselines")
    }
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(asset_key("baselines"), "accuracy_above_chance")])
    assert checks and next(iter(checks.values())).run_id == run_id

    # The same records, read by psql from PostgreSQL's tables.
    pg = lab.pg
    assert pg.query(f"select status from runs where run_id = '{run_id}'") == [["SUCCESS"]]
    for asset, digest in digests.items():
        rows = pg.query(
            "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION' "
            f"and run_id = '{run_id}' and asset_key = '{asset_key(asset).to_string()}' and partition = 'capitals' "
            f"and event like '%{digest}%'")
        assert rows == [["1"]], (asset, rows)
    types = {row[0] for row in pg.query(f"select distinct dagster_event_type from event_logs where run_id = '{run_id}'")}
    assert event_values("RUN_START", "STEP_START", "ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION",
                        "RUN_SUCCESS") <= types
    # Every run of this module so far, and the password in none of the stored records.
    assert int(pg.query("select count(*) from runs where status = 'SUCCESS'")[0][0]) >= 3
    password = pg.env["DAGSTER_PG_PASSWORD"]
    for table, column in (("runs", "run_body"), ("event_logs", "event")):
        assert pg.query(f"select count(*) from {table} where {column} like '%{password}%'") == [["0"]]


def event_values(*names: str) -> set[str]:
    """How PostgreSQL's event_logs table spells these event types (RUN_START is PIPELINE_START)."""
    return {dg.DagsterEventType[name].value for name in names}


BASELINE_CHECKS = ("accuracy_above_chance", "corruption_flips_preference")


def launch_baselines(dev: DagsterDev, partition: str) -> str:
    """What the UI's Materialize button sends for one partition of baselines (with its checks)."""
    result = dev.graphql(LAUNCH_RUN, {"executionParams": {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "pipelineName": "__ASSET_JOB",
                     "assetSelection": [{"path": [LOCATION, "baselines"]}],
                     "assetCheckSelection": [{"assetKey": {"path": [LOCATION, "baselines"]}, "name": name}
                                             for name in BASELINE_CHECKS]},
        "mode": "default", "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }})["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def test_two_runs_of_one_partition_launched_at_once_through_the_daemon(lab: Lab, tmp_path: Path) -> None:
    instance, pg = lab.instance, lab.pg
    dev = start_dagster_dev(lab.home, lab.config_path, tmp_path / "dagster_dev.log")
    paused = None
    try:
        run_ids = {launch_baselines(dev, "ioi"), launch_baselines(dev, "ioi")}
        paused = pause_slot_holder(instance, dev.process.pid, run_ids, "baselines")
        (waiter,) = run_ids - {paused.holder}

        # The other run waits: either the daemon keeps it queued (its step's pool is full) or,
        # launched already, its step is blocked by the pool ("Step blocked by limit for pool tiny.baselines").
        def waiting() -> bool:
            return (was_blocked(instance, waiter)
                    or f"Run {waiter} is blocked by global concurrency limits" in dev.log_tail(200_000))

        wait_for(f"run {waiter} to wait for pool compute\n{dev.log_tail()}", waiting)
        print(f"{waiter} waits {'in its step' if was_blocked(instance, waiter) else 'in the queue'}; "
              f"{paused.holder} holds the pool")
        assert slot_holders(instance) == {paused.holder}
        assert instance.get_run_by_id(waiter).status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED,
                                                         dg.DagsterRunStatus.STARTING)
        resume(paused)
        paused = None
        for run_id in run_ids:
            assert wait_for_run(dev, run_id)["status"] == "SUCCESS", dev.log_tail()
    finally:
        if paused is not None:
            resume(paused)
        dev.stop()

    (holder,) = run_ids - {waiter}
    _, holder_end = step_window(instance, holder, "baselines")
    waiter_start, _ = step_window(instance, waiter, "baselines")
    assert waiter_start >= holder_end
    assert not slot_holders(instance)
    assert_artifact_matches_latest_data_version(
        instance, lab.storage, "baselines", "ioi", "baselines/ioi.parquet", run_ids)
    # Both runs and all their events are in PostgreSQL, launched by the daemon from the queue.
    ids = ", ".join(f"'{run_id}'" for run_id in sorted(run_ids))
    assert pg.query(f"select count(*) from runs where run_id in ({ids}) and status = 'SUCCESS'") == [["2"]]
    for run_id in run_ids:
        types = {row[0] for row in pg.query(f"select dagster_event_type from event_logs where run_id = '{run_id}'")}
        assert event_values("RUN_ENQUEUED", "RUN_STARTING", "RUN_START", "STEP_START", "ASSET_MATERIALIZATION",
                            "RUN_SUCCESS") <= types, (run_id, types)


def test_two_cli_runs_of_one_partition_on_postgres_take_turns(lab: Lab, tmp_path: Path) -> None:
    """Runs that bypass the queue (`dagster asset materialize`, the main job) on the lab instance:
    the pool, through PostgreSQL's concurrency tables, makes the second one's step wait."""
    first, second = cli_runs_take_turns(lab.instance, lab.home, lab.config_path, lab.storage, tmp_path, "ioi")
    blocked = lab.pg.query(
        f"select count(*) from event_logs where run_id = '{second}' and dagster_event_type = 'ENGINE_EVENT' "
        "and event like '%Step blocked by limit for pool tiny.baselines%'")
    assert blocked != [["0"]]
    assert lab.pg.query(f"select count(*) from runs where run_id in ('{first}', '{second}') and status = 'SUCCESS'") \
        == [["2"]]
