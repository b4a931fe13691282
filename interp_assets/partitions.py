"""Partitions derived from the experiment config: layers (activations, dashboards), the SAE
partitions (layers, or layers × variants in a sweep) and behaviours."""

from __future__ import annotations

import dagster as dg

from interp_assets.config import ExperimentConfig, split_sae_key


def layer_partitions(config: ExperimentConfig) -> dg.StaticPartitionsDefinition:
    """One partition per captured layer ("10", "11", ...); a layer backfill is one run."""
    return dg.StaticPartitionsDefinition(config.layer_keys)


def sae_partitions(config: ExperimentConfig) -> dg.StaticPartitionsDefinition:
    """``saes``: one partition per layer, or per layer × variant ("3:topk_k16") in a sweep.

    One dimension on purpose: Dagster turns a single-run backfill of a 2-D (multi-)partitioned
    asset into one run per row or column, while a range of one dimension is one run, so the
    whole sweep, or every layer of a variant, is one run and one SLURM array job."""
    return dg.StaticPartitionsDefinition(config.sae_partition_keys)


def sae_to_layer(config: ExperimentConfig) -> dg.PartitionMapping:
    """Between a layer-partitioned asset and ``saes``: a layer is every variant's SAE of it."""
    if not config.sae_variants:
        return dg.IdentityPartitionMapping()
    return dg.StaticPartitionMapping({key: str(split_sae_key(key)[0]) for key in config.sae_partition_keys})


def layer_to_sae(config: ExperimentConfig) -> dg.PartitionMapping:
    """From ``activations`` (per layer) to ``saes``: each variant of a layer reads that layer."""
    if not config.sae_variants:
        return dg.IdentityPartitionMapping()
    keys: dict[str, list[str]] = {}
    for key in config.sae_partition_keys:
        keys.setdefault(str(split_sae_key(key)[0]), []).append(key)
    return dg.StaticPartitionMapping(keys)


def trained_saes_asset(config: ExperimentConfig) -> str:
    """The asset the phases after training read their SAEs through: ``saes`` itself, or in a
    sweep ``sae_selection`` (one chosen variant per layer)."""
    return "sae_selection" if config.sae_variants else "saes"


def behaviour_partitions(config: ExperimentConfig) -> dg.StaticPartitionsDefinition:
    """One partition per behaviour ("ioi", "capitals")."""
    return dg.StaticPartitionsDefinition(list(config.prompts.behaviours))
