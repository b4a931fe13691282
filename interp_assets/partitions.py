"""Partitions derived from the experiment config: layers (activations, saes) and behaviours."""

from __future__ import annotations

import dagster as dg

from interp_assets.config import ExperimentConfig


def layer_partitions(config: ExperimentConfig) -> dg.StaticPartitionsDefinition:
    """One partition per captured layer ("10", "11", ...); a layer backfill is one run."""
    return dg.StaticPartitionsDefinition(config.layer_keys)


def behaviour_partitions(config: ExperimentConfig) -> dg.StaticPartitionsDefinition:
    """One partition per behaviour ("ioi", "capitals")."""
    return dg.StaticPartitionsDefinition(list(config.prompts.behaviours))
