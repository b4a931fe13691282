"""Which compute backend the code location uses: chosen by the environment, never by code.

``INTERP_ASSETS_COMPUTE=local`` (default) runs workers as local subprocesses;
``INTERP_ASSETS_COMPUTE=slurm`` submits them as SLURM jobs with the settings of the profile file
named by ``INTERP_ASSETS_SLURM_PROFILE`` (a YAML mapping of SlurmCompute fields, e.g.
``configs/slurm-cd3.yaml``). The backend is not part of the experiment config on purpose: where
a task runs must not change any asset's code version (they hash only the config sections the
asset reads), so switching a study from a laptop to the cluster stales nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from resources.compute import PROJECT_ROOT, ComputeResource, LocalCompute

COMPUTE_ENV_VAR = "INTERP_ASSETS_COMPUTE"
PROFILE_ENV_VAR = "INTERP_ASSETS_SLURM_PROFILE"


def load_slurm_profile(path: str | Path) -> ComputeResource:
    """A SlurmCompute from a profile file, checked before anything can be submitted."""
    from pydantic import ValidationError

    from resources.slurm import SlurmCompute, SlurmConfigError

    path = Path(path)
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise SlurmConfigError(f"{PROFILE_ENV_VAR}: cannot read the SLURM profile {path}: {error.strerror}") from None
    if not isinstance(data, dict):
        raise SlurmConfigError(f"SLURM profile {path}: expected a mapping of SlurmCompute settings")
    try:
        compute = SlurmCompute(**data)
    except (ValidationError, TypeError, ValueError) as error:
        raise SlurmConfigError(f"SLURM profile {path}: {error}") from None
    compute.check_settings()
    return compute


def compute_from_env() -> ComputeResource:
    backend = os.environ.get(COMPUTE_ENV_VAR, "local").strip().lower() or "local"
    if backend == "local":
        return LocalCompute()
    if backend == "slurm":
        profile = os.environ.get(PROFILE_ENV_VAR)
        if not profile:
            raise ValueError(f"{COMPUTE_ENV_VAR}=slurm needs {PROFILE_ENV_VAR}=<profile.yaml>, e.g. configs/slurm-cd3.yaml")
        return load_slurm_profile(profile)
    raise ValueError(f"{COMPUTE_ENV_VAR}={backend!r}: use local or slurm")
