"""Experiment tracking against a real MLflow server (scripts/mlflow-local.sh: the full `mlflow`
package serving on loopback, its backend store on the project's local PostgreSQL).

One SAE trained with ``tracking.mlflow_uri`` set is one MLflow run in the experiment's MLflow
experiment: its parameters, its curve at the log interval, its held-out evaluations; the Dagster
materialization links to it. No secret of the environment reaches the server's database. Then the
server is stopped and the next layer trains: the materialization succeeds with every figure it
has without tracking, and the run log says why the link is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster_dev import free_port
from helpers import (PROJECT_ROOT, SMALL_CORPUS, asset_key, in_experiment, run_log, seed_tiny_model, start_local_server,
                     write_config)

from interp_assets.definitions import build_definitions

pytestmark = pytest.mark.slow

SCRIPT = PROJECT_ROOT / "scripts" / "mlflow-local.sh"
SECRET = "hf_do_not_log_me_0123456789"
SAE = {"steps": 150, "log_every": 50, "checkpoint_every": 100, "lr_warmup_steps": 20, "lr_decay_steps": 30,
       "l1_warmup_steps": 20, "min_explained_variance": 0.0, "max_dead_fraction": 1.0}


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[dict[str, str]]:
    # Not under pytest's temp root: that folder is private to root, and PostgreSQL runs as postgres.
    state = Path(tempfile.mkdtemp(prefix="interp-assets-mlflow-", dir="/tmp"))
    state.chmod(0o755)  # the PostgreSQL server's user must reach its data folder below it
    env = {**os.environ, "INTERP_ASSETS_PG_DIR": str(state / "pg"), "INTERP_ASSETS_PG_PORT": str(free_port()),
           "INTERP_ASSETS_MLFLOW_DIR": str(state / "mlflow"), "INTERP_ASSETS_MLFLOW_PORT": str(free_port())}
    try:
        yield {"uri": start_local_server(SCRIPT, env, "the MLflow server")["MLFLOW_TRACKING_URI"], **env}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, env=env, timeout=120)
        subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "postgres-local.sh"), "stop"], capture_output=True,
                       env=env, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def _database_dump(server: dict[str, str]) -> str:
    """Everything the MLflow server stored, through PostgreSQL's own pg_dump."""
    exports = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "postgres-local.sh"), "env"], capture_output=True,
                             text=True, env=server, check=True).stdout
    pg = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines() if line.startswith("export "))
    pg_dump = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))[-1]
    done = subprocess.run([str(pg_dump), "-h", pg["DAGSTER_PG_HOST"], "-p", pg["DAGSTER_PG_PORT"],
                           "-U", pg["DAGSTER_PG_USERNAME"], "-d", "mlflow", "--data-only"], capture_output=True,
                          text=True, env={**os.environ, "PGPASSWORD": pg["DAGSTER_PG_PASSWORD"]}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sae_training_is_tracked_and_linked_and_a_dead_server_harms_nothing(
    mlflow_server: dict[str, str], tmp_path: Path, tiny_model_storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    uri = mlflow_server["uri"]
    config_path = write_config(tmp_path, {"sae": SAE, "corpus": SMALL_CORPUS, "activations": {"layers": "1-2"},
                                          "attribution": {"key_layers": [1, 2]},
                                          "tracking": {"mlflow_uri": uri}})
    seed_tiny_model(tmp_path / "storage", tiny_model_storage)
    # Secrets a researcher's shell holds: the worker inherits them; MLflow must never see them.
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET + "_pw")
    defs = build_definitions(config_path)

    with dg.instance_for_test() as instance:
        def materialize(selection: list[str], **kwargs: object) -> dg.ExecuteInProcessResult:
            return dg.materialize(list(defs.assets), selection=in_experiment(selection), instance=instance,
                                  resources=dict(defs.resources), raise_on_error=False, **kwargs)

        def partition_metadata(layer: str) -> dict:
            (record,) = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key("saes"), asset_partitions=[layer]), limit=1).records
            return record.asset_materialization.metadata

        for behaviour in ("ioi", "capitals"):
            assert materialize(["prompts"], partition_key=behaviour).success
        assert materialize(["activations"], tags={"dagster/asset_partition_range_start": "1",
                                                  "dagster/asset_partition_range_end": "2"}).success
        tracked = materialize(["saes"], partition_key="1")
        assert tracked.success

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("tiny")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == "saes/layer_001" and run.info.status == "FINISHED"
        assert run.data.tags["dagster.run_id"] == tracked.run_id and run.data.tags["layer"] == "1"
        params = run.data.params
        assert params["sae.architecture"] == "relu" and params["sae.steps"] == "150" and params["layer"] == "1"
        assert params["activations.hook_point"] == "mlp_post" and int(params["d_sae"]) == 4 * int(params["d_in"])
        # The curve at the log interval, each point at its step.
        for name in ("train/loss", "train/r2", "train/l0", "train/dead_fraction"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [50, 100, 150], name
        metadata = partition_metadata("1")
        held_out = {name: metadata[name].value for name in ("explained_variance", "l0", "ce_loss_recovered")}
        for name, value in held_out.items():
            assert run.data.metrics[f"held_out/{name}"] == pytest.approx(value), name
        assert "random_sae/explained_variance" in run.data.metrics
        link = metadata["mlflow_run"]
        assert isinstance(link, dg.UrlMetadataValue)
        assert link.value == f"{uri}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        dump = _database_dump(mlflow_server)
        assert run.info.run_id in dump and SECRET not in dump and tmp_path.name not in dump

        # The server goes away; layer 2 trains and is materialized as it would be without tracking.
        subprocess.run(["bash", str(SCRIPT), "stop"], check=True, capture_output=True, env=mlflow_server, timeout=120)
        untracked = materialize(["saes"], partition_key="2")
        assert untracked.success
        # The same figures as the tracked layer's, less the link (a CE warning is the layer's own data).
        assert set(partition_metadata("2")) - {"ce_warning"} == set(metadata) - {"mlflow_run", "ce_warning"}
        log = run_log(instance, untracked.run_id)
        warning = log.index(f"layer 2: MLflow tracking at {uri} failed")
        assert log.rindex("step 150/150") < warning  # after training: it never waited on the server
        assert "the SAE and its Dagster metadata are complete without it" in log
