"""A run whose process is killed outright (SIGKILL: an OOM kill, a reboot, a closed tmux) releases
what it holds (interp_assets/dead_runs.py): through the project's launcher (webserver + daemon),
a run training layer 1's SAE holds the experiment's `saes` pool while a run of layer 2 waits; the first
run's process is SIGKILLed mid-step. Within the stated time the dead run is FAILED, its worker
is stopped, its pool slot is free, and the waiting run starts and succeeds."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_dev import RELOAD, LOCATION, launch_backfill, start_private_ui
from helpers import PROJECT_ROOT, SMALL_CORPUS, asset_key, in_experiment, run_log, seed_tiny_model, wait_for, write_config

from interp_assets.dead_runs import CHECK_SECONDS, process_started_at, run_process
from interp_assets.definitions import build_definitions
from resources.compute import RUN_ID_ENV

pytestmark = pytest.mark.slow

SAE = {"steps": 50_000, "checkpoint_every": 500, "log_every": 100, "lr_warmup_steps": 100, "lr_decay_steps": 200,
       "l1_warmup_steps": 200, "eval_vectors": 512, "min_explained_variance": 0.0,
       "max_dead_fraction": 1.0}

QUICK_SAE = {**SAE, "steps": 150, "checkpoint_every": 100, "log_every": 50, "lr_warmup_steps": 20, "lr_decay_steps": 30,
             "l1_warmup_steps": 20}


def _workers_of(run_id: str) -> list[int]:
    marker = f"{RUN_ID_ENV}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _quietly(read):  # noqa: ANN001, ANN202
    """A read of the SQLite instance while the daemon writes it can meet a run's event database
    half-created (alembic: "more than one head"); the next poll reads it whole."""
    try:
        return read()
    except Exception:  # noqa: BLE001
        return None


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus | None:
    run = _quietly(lambda: instance.get_run_by_id(run_id))
    return run.status if run else None


def _runs_of(instance: dg.DagsterInstance, backfill: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill})))


def test_a_killed_run_is_failed_its_slot_freed_and_the_waiting_run_goes_on(
    tmp_path: Path, tiny_model_storage: Path
) -> None:
    config_path = write_config(tmp_path, {"sae": SAE, "corpus": SMALL_CORPUS,
                                          "automation": {"enabled": False}})
    seed_tiny_model(tmp_path / "storage", tiny_model_storage)
    defs = build_definitions(config_path)
    with dg.instance_for_test() as scratch:  # the inputs, made beforehand
        for behaviour in ("ioi", "capitals"):
            assert dg.materialize(list(defs.assets), selection=in_experiment(["prompts"]), partition_key=behaviour,
                                  instance=scratch, resources=dict(defs.resources)).success
        assert dg.materialize(list(defs.assets), selection=in_experiment(["activations"]), instance=scratch,
                              resources=dict(defs.resources), tags={"dagster/asset_partition_range_start": "1",
                                                                    "dagster/asset_partition_range_end": "2"}).success
    home = tmp_path / "dagster_home"
    home.mkdir(mode=0o700)
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    ui = start_private_ui(home, config_path, tmp_path / "ui.log", tmp_path / "ui" / "ui.sock")
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            first = launch_backfill(ui, ["saes"], ["1"])
            (run,) = wait_for("the first run", lambda: _quietly(lambda: _runs_of(instance, first)), timeout=120, every=1)
            wait_for("its SAE training", lambda: "layer 1: step" in (_quietly(lambda: run_log(instance, run.run_id)) or ""),
                     timeout=300, every=1)
            # The waiting run is another partition of the same asset (its pool, tiny.saes), trained
            # short: the config is edited and the location reloaded, as a researcher would; the
            # first run goes on with the settings it was launched with.
            write_config(tmp_path, {"sae": QUICK_SAE, "corpus": SMALL_CORPUS, "automation": {"enabled": False}})
            reload = ui.graphql(RELOAD, {"name": LOCATION})["reloadRepositoryLocation"]
            assert reload["locationOrLoadError"]["__typename"] == "RepositoryLocation", reload
            second = launch_backfill(ui, ["saes"], ["2"])
            (waiting,) = wait_for("the second run", lambda: _quietly(lambda: _runs_of(instance, second)), timeout=120,
                                  every=1)
            time.sleep(5)
            assert instance.get_run_by_id(waiting.run_id).status in (
                dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
            assert "layer 2: step" not in run_log(instance, waiting.run_id)  # held back by the pool
            pid, _ = run_process(instance, run.run_id)
            workers = _workers_of(run.run_id)
            assert workers and process_started_at(pid) is not None

            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for("the dead run to be failed", lambda: _status(instance, run.run_id) == dg.DagsterRunStatus.FAILURE,
                     timeout=4 * CHECK_SECONDS + 30, every=1)
            failed_after = time.monotonic() - killed
            assert failed_after <= 2 * CHECK_SECONDS + 15, failed_after
            wait_for("its release", lambda: any(
                "release_dead_runs: the run's process" in (r.event_log_entry.dagster_event.message or "")
                for r in _quietly(lambda: instance.get_records_for_run(
                    run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records) or []),
                timeout=4 * CHECK_SECONDS + 30, every=1)
            released_after = time.monotonic() - killed
            assert released_after <= 2 * CHECK_SECONDS + 15, released_after
            wait_for("its worker to stop", lambda: not _workers_of(run.run_id), timeout=60, every=0.5)

            wait_for("the waiting run to succeed", lambda: _status(instance, waiting.run_id)
                     in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE), timeout=600, every=2)
            assert instance.get_run_by_id(waiting.run_id).status == dg.DagsterRunStatus.SUCCESS, ui.log_tail()
            print(f"dead run failed {failed_after:.1f} s and released {released_after:.1f} s after SIGKILL")
    finally:
        ui.stop()
