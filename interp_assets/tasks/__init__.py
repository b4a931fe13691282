"""One module per phase, each with the task a worker runs for it (``python -m interp_assets.worker
<task>``): read inputs from the storage root, do the heavy work with ``core``, write artifacts
(paths from ``interp_assets.artifacts``), return metadata and a content-hash data version.

A new phase: a module here with ``task_<name>(ctx) -> TaskResult``, an entry in ``TASKS``, its
paths in ``artifacts.py``, and its asset in ``assets/`` (added to ``assets.PHASES``).
"""

from __future__ import annotations

from collections.abc import Callable

from interp_assets.tasks.activations import task_activations
from interp_assets.tasks.attribution_graphs import task_attribution_graphs
from interp_assets.tasks.baselines import task_baselines
from interp_assets.tasks.common import TaskContext, TaskResult
from interp_assets.tasks.feature_dashboards import task_feature_dashboards
from interp_assets.tasks.interventions import task_interventions
from interp_assets.tasks.language_model import task_language_model
from interp_assets.tasks.saes import task_saes

TASKS: dict[str, Callable[[TaskContext], TaskResult]] = {
    "language_model": task_language_model,
    "baselines": task_baselines,
    "activations": task_activations,
    "saes": task_saes,
    "feature_dashboards": task_feature_dashboards,
    "attribution_graphs": task_attribution_graphs,
    "interventions": task_interventions,
}
