"""What every phase's assets share: code versions, and handing a task to the compute backend."""

from __future__ import annotations

from typing import Any, NoReturn

import dagster as dg

from interp_assets.config import ExperimentConfig
from resources.compute import ComputeResource


def code_version(config: ExperimentConfig, logic_version: str, *sections: str) -> str:
    """Logic version + hash of the config sections the asset reads: editing a section makes
    exactly the assets that read it (and what is downstream of them) stale."""
    return f"{logic_version}+{config.section_hash(*sections)}"


def run_worker(
    context: dg.AssetExecutionContext, compute: ComputeResource, *, task: str, config: ExperimentConfig
) -> dg.MaterializeResult:
    """Run ``task`` on the compute backend for this run's partition keys and collect its result.

    A layer-range run reports per-layer metadata as a custom Pipes message; it is recorded on
    each layer's own partition (the data version, one per Pipes session, covers the range).
    """
    partition_keys = list(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else []
    extras: dict[str, Any] = {
        "config": config.to_payload(),
        "config_source": config.source_path,
        "partition_keys": partition_keys,
    }
    invocation = compute.run(context, task=task, extras=extras)
    for message in invocation.get_custom_messages():
        for key, metadata in (message or {}).get("partitions", {}).items():
            context.add_asset_metadata(metadata, partition_key=key)
    return invocation.get_materialize_result()


def not_implemented(asset: str, issue: str) -> NoReturn:
    raise NotImplementedError(
        f"{asset}: not implemented yet ({issue}). Its upstream assets materialize; this phase "
        "writes nothing until its issue lands, so no placeholder output can be mistaken for results."
    )
