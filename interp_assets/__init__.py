"""interp_assets: a mechanistic-interpretability study as one Dagster asset graph.

``interp_assets.open_study(config)`` opens a study's results for reading in a notebook
(interp_assets/study.py). It is imported on first use, so the worker and the code location,
which import this package too, never pay for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["open_study"]


def __getattr__(name: str) -> Any:
    if name == "open_study":
        from interp_assets.study import open_study

        return open_study
    raise AttributeError(f"module 'interp_assets' has no attribute {name!r}")
