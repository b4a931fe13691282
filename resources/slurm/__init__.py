"""SLURM compute, in five rooms:

- ``settings``: the profile's fields checked before anything is submitted (``check_settings``);
- ``script``: the sbatch command line and the batch script, pure functions of a ``BatchSpec``;
- ``status``: squeue / sacct / scontrol output parsed, end states and their explanations;
- ``follower``: one run's jobs submitted, polled, resubmitted, cancelled;
- ``resource``: ``SlurmCompute``, the Dagster resource that ties them together.
"""

from resources.slurm.resource import SlurmCompute
from resources.slurm.settings import SlurmConfigError, SlurmJobSettings, time_limit_seconds

__all__ = ["SlurmCompute", "SlurmConfigError", "SlurmJobSettings", "time_limit_seconds"]
