"""Provenance recorded with every worker materialization: the checkout's commit, package
versions, seed, model, compute backend, host, device, SLURM job, wall time."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

from interp_assets.config import PROJECT_ROOT

if TYPE_CHECKING:
    from interp_assets.config import ExperimentConfig


def git_commit() -> str:
    """The checkout's commit (``INTERP_ASSETS_GIT_COMMIT`` wins: a copy without .git can set it)."""
    if os.environ.get("INTERP_ASSETS_GIT_COMMIT"):
        return os.environ["INTERP_ASSETS_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def device_name(config: ExperimentConfig) -> str:
    import torch

    if torch.cuda.is_available() and config.model.device != "cpu":
        return torch.cuda.get_device_name(0)
    return "cpu"


def slurm_job_id() -> str:
    """This job's SLURM id as squeue and sacct show it: ``<array job>_<task>`` for an array task
    (SLURM_JOB_ID alone is the task's own number, which no listing shows), "none" outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID", "none")


def provenance(config: ExperimentConfig, started: float) -> dict[str, Any]:
    """What a worker records about where and how it made its outputs: every value a scalar (or
    the package table), this worker's own, so a layer partition trained by one array task carries
    exactly that task's job id, host, device and seconds."""
    return {
        "provenance/git_commit": git_commit(),
        "provenance/packages": {"raw_value": package_versions(), "type": "json"},
        "provenance/seed": config.experiment.seed,
        "provenance/model": config.model.name,
        "provenance/model_revision": config.model.revision or "none",
        "provenance/compute_backend": os.environ.get("INTERP_ASSETS_COMPUTE_BACKEND", "direct"),
        "provenance/host": socket.gethostname(),
        "provenance/device": device_name(config),
        "provenance/slurm_job_id": slurm_job_id(),
        "provenance/wall_seconds": round(time.perf_counter() - started, 3),
    }
