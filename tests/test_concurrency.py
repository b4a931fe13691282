"""Two runs materializing the same partition at once on the dev instance (dagster_home/dagster.yaml,
SQLite): the heavy step of the second waits for the pool slot ("Step blocked by limit for pool
compute") and runs only after the first one's step has ended; both succeed, and the stored
artifact is complete, with the sha256 that both runs recorded as its data version.

The runs are two real `dagster asset materialize` processes, as two researchers (or a researcher
and the main job) would start on one machine: they bypass the run queue, so it is the pool,
enforced per step through the instance's concurrency tables, that keeps them apart. The same on
the lab's PostgreSQL instance, and through the daemon's queue there: test_postgres.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from concurrent_runs import cli_runs_take_turns
from helpers import PROJECT_ROOT, asset_key, in_experiment, seed_tiny_model, write_config

from interp_assets.definitions import build_definitions

pytestmark = pytest.mark.slow


def test_two_cli_runs_of_one_partition_on_the_sqlite_dev_instance_take_turns(
    tmp_path: Path, tiny_model_storage: Path,
) -> None:
    config_path = write_config(tmp_path)
    seed_tiny_model(tmp_path / "storage", tiny_model_storage)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
        assert instance.event_log_storage.supports_global_concurrency_limits
        defs = build_definitions(config_path)
        for selection, partition in ((["language_model"], None), (["prompts"], "ioi")):
            dg.materialize(list(defs.assets), selection=in_experiment(selection), partition_key=partition, instance=instance,
                           resources=dict(defs.resources))
        cli_runs_take_turns(instance, home, config_path, tmp_path / "storage", tmp_path, "ioi")
