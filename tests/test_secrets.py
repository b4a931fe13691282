"""Secrets (S3 keys, hub tokens, SSH keys) come only from the environment or from files: a
resource that is handed one in its config refuses it before any worker or job starts, without
echoing the value, and a worker's environment never reaches the run's records."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest
from helpers import asset_key, in_experiment, seed_tiny_model, write_config

from interp_assets.config import load_config
from interp_assets.definitions import build_definitions
from resources.compute import LocalCompute
from resources.slurm import SlurmCompute, SlurmConfigError


@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "db_password"])
def test_slurm_refuses_secrets_in_its_env_naming_the_field(name: str) -> None:
    value = f"s3cr3t-{uuid.uuid4().hex}"
    with pytest.raises(SlurmConfigError, match=rf"SlurmCompute\.env: \['{name}'\] look like secrets") as caught:
        SlurmCompute(env={name: value, "OMP_PROC_BIND": "close"}).check_settings()
    assert value not in str(caught.value)
    SlurmCompute(env={"OMP_PROC_BIND": "close", "HF_HUB_OFFLINE": "1"}).check_settings()  # ordinary settings pass


def test_a_secret_in_local_compute_config_fails_the_step_before_the_worker_runs(
    tmp_path: Path, tiny_model_storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._serdes import serialize_value

    in_config, in_environment = f"config-{uuid.uuid4().hex}", f"environment-{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", in_environment)  # the supported way: workers inherit it
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    seed_tiny_model(config.storage.location, tiny_model_storage)
    defs = build_definitions(config_path)
    with dg.instance_for_test() as instance:
        def materialize(compute: LocalCompute) -> dg.ExecuteInProcessResult:
            return dg.materialize(list(defs.assets), selection=in_experiment(["prompts", "baselines"]), partition_key="ioi",
                                  instance=instance, resources={"compute": compute}, raise_on_error=False)

        refused = materialize(LocalCompute(env={"HF_TOKEN": in_config}))
        assert not refused.success
        failures = [str(e.event_specific_data.error) for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
        assert len(failures) == 1 and "LocalCompute.env: ['HF_TOKEN'] look like secrets" in failures[0]
        assert not Path(config.storage.location, "baselines", "ioi.parquet").exists()  # no worker ran

        assert materialize(LocalCompute(env={"HF_HUB_OFFLINE": "1"})).success
        recorded = "".join(serialize_value(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id))
    assert "look like secrets" in recorded and "baselines" in recorded
    assert in_config not in recorded and in_environment not in recorded
