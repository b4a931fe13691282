"""What the SLURM test modules share: the local cluster script, starting it, and running assets
through SlurmCompute."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dagster as dg
import pytest
from helpers import PROJECT_ROOT, asset_key, in_experiment

from interp_assets.definitions import build_definitions
from resources.slurm import SlurmCompute

SCRIPT = PROJECT_ROOT / "scripts" / "slurm-local.sh"


def cluster(*flags: str) -> None:
    """Start the local cluster in this mode (a no-op when it already runs so); skip, with the
    script's reason, when it cannot start (not root, no apt)."""
    done = subprocess.run(["bash", str(SCRIPT), "start", *flags], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"the local SLURM cluster did not start ({' '.join(flags) or 'plain'}): {done.stderr.strip()[-800:]}")


def stop_cluster() -> None:
    subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def cluster_lifetime():  # noqa: ANN201
    """Imported by each SLURM test module: its cluster is stopped when the module is done."""
    yield
    stop_cluster()


def jobs(*ids: str, name: str | None = None) -> list[dict[str, str]]:
    """Every job the controller knows (finished ones included), oldest first; or just ``ids``, or
    those named ``name``."""
    argv = ["squeue", "-h", "-t", "all", "-o", "%A|%F|%K|%j|%T"]
    if ids:
        argv += ["-j", ",".join(ids)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout
    keys = ("job_id", "array_job_id", "array_index", "name", "state")
    rows = [dict(zip(keys, line.split("|"), strict=True)) for line in out.split()]
    return sorted((r for r in rows if name is None or r["name"] == name), key=lambda r: int(r["job_id"]))


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return failure.event_specific_data.error.to_string()


def materialize(config_path: Path, selection: list[str], compute: object, instance: dg.DagsterInstance,
                **kwargs: object) -> dg.ExecuteInProcessResult:
    defs = build_definitions(config_path)
    return dg.materialize(list(defs.assets), selection=in_experiment(selection), instance=instance,
                          resources={"compute": compute}, raise_on_error=False, **kwargs)


def slurm(tmp: Path, **settings: object) -> SlurmCompute:
    return SlurmCompute(log_dir=str(tmp / "slurm-logs"), poll_seconds=0.5, max_poll_seconds=3.0, **settings)
