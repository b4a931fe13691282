"""Every experiment of the workspace as a module attribute: ``interp_assets.experiments.<name>``
is the ``Definitions`` of the config whose ``experiment.name`` is ``<name>`` (interp_assets/workspace.py
lists them). Built on first access, so a code location loads, and validates, only its own config."""

from __future__ import annotations

from functools import cache

import dagster as dg

from interp_assets.config import ConfigError


@cache
def _definitions(name: str) -> dg.Definitions:
    from interp_assets.definitions import build_definitions
    from interp_assets.workspace import experiments

    paths = experiments()
    if name not in paths:
        raise ConfigError(f"no experiment config declares experiment.name {name!r} (configs: "
                          f"{', '.join(str(p) for p in paths.values()) or 'none'})")
    return build_definitions(paths[name])


def __getattr__(name: str) -> dg.Definitions:
    if name.startswith("__"):  # module machinery (__path__, __wrapped__, ...) is not an experiment
        raise AttributeError(name)
    return _definitions(name)
