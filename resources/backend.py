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

from resources.compute import PROJECT_ROOT, ComputeResource, LocalCompute

COMPUTE_ENV_VAR = "INTERP_ASSETS_COMPUTE"
PROFILE_ENV_VAR = "INTERP_ASSETS_SLURM_PROFILE"


def load_slurm_profile(path: str | Path) -> ComputeResource:
    """A SlurmCompute from a profile file (relative paths: from the checkout), checked before
    anything can be submitted (``resources/slurm/profile.py``)."""
    from resources.slurm.profile import load_profile

    path = Path(path)
    return load_profile(path if path.is_absolute() else PROJECT_ROOT / path)


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
