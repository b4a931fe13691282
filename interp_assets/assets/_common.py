"""What every phase's assets share: code versions, and handing a task to the compute backend."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import dagster as dg

from interp_assets.config import ExperimentConfig
from interp_assets.dead_runs import HOST_TAG
from resources.compute import ComputeResource


def code_version(config: ExperimentConfig, logic_version: str, *sections: str) -> str:
    """Logic version + hash of the config sections the asset reads: editing a section makes
    exactly the assets that read it (and what is downstream of them) stale. An asset that reads
    the ``corpus`` section also carries the corpus's content fingerprint (its files' bytes and a
    pretrained model's tokenizer): a changed corpus file stales it like a config edit."""
    version = f"{logic_version}+{config.section_hash(*sections)}"
    if "corpus" in sections:
        from interp_assets.config import corpus_identity

        version += f"+corpus.{corpus_identity(config)}"
    return version


_PIPES_TYPES = {
    "md": dg.MetadataValue.md,
    "json": dg.MetadataValue.json,
    "text": dg.MetadataValue.text,
    "path": dg.MetadataValue.path,
    "url": dg.MetadataValue.url,
    "table": lambda raw: _table(raw),
}


def _table(raw: dict[str, Any]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord(record) for record in raw["records"]],
        schema=dg.TableSchema(columns=[dg.TableColumn(c["name"], c["type"]) for c in raw["schema"]]),
    )


def _metadata_value(value: Any) -> Any:
    """Custom Pipes messages carry raw JSON: decode the {"raw_value", "type"} form the worker
    uses for typed metadata (markdown plots, JSON, tables) as Pipes itself would."""
    if isinstance(value, dict) and set(value) == {"raw_value", "type"} and value["type"] in _PIPES_TYPES:
        return _PIPES_TYPES[value["type"]](value["raw_value"])
    return value


def tag_run(context: dg.AssetExecutionContext, config: ExperimentConfig) -> None:
    """Give the run the study's tags (paper-id, researcher, model, commit-sha) however it was
    launched: UI, CLI, backfill or the automation sensor."""
    from interp_assets.automation import run_tags

    # The host tells release_dead_runs (interp_assets/dead_runs.py) where the run's process lives.
    wanted = {**run_tags(config), HOST_TAG: socket.gethostname()}
    missing = {k: v for k, v in wanted.items() if context.run.tags.get(k) != v}
    if missing:
        context.instance.add_run_tags(context.run.run_id, missing)


def run_worker(
    context: dg.AssetExecutionContext, compute: ComputeResource, *, task: str, config: ExperimentConfig
) -> dg.MaterializeResult:
    """Run ``task`` on the compute backend for this run's partition keys and collect its result.

    A layer-range run reports per-layer metadata as a custom Pipes message; it is recorded on
    each layer's own partition (the data version, one per Pipes session, covers the range).
    """
    tag_run(context, config)
    partition_keys = list(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else []
    extras: dict[str, Any] = {
        "config": config.to_payload(),
        "config_source": config.source_path,
        "partition_keys": partition_keys,
        # How the range splits into independent units (SLURM: one array task each), decided here
        # once, from the config; the worker groups its streamed layers the same way.
        "task_groups": config.sae_task_groups(partition_keys) if task == "saes" else [[k] for k in partition_keys],
    }
    invocation = compute.run(context, task=task, extras=extras)
    for message in invocation.get_custom_messages():
        for key, metadata in (message or {}).get("partitions", {}).items():
            context.add_asset_metadata({k: _metadata_value(v) for k, v in metadata.items()}, partition_key=key)
    return invocation.get_materialize_result()



def run_worker_with_checks(
    context: dg.AssetExecutionContext,
    compute: ComputeResource,
    *,
    task: str,
    config: ExperimentConfig,
    checks: Callable[[dict[str, Any]], list[dg.AssetCheckResult]],
) -> dg.MaterializeResult:
    """``run_worker``, then the asset's checks evaluated on the metadata the worker reported."""
    result = run_worker(context, compute, task=task, config=config)
    return dg.MaterializeResult(
        metadata=result.metadata, data_version=result.data_version, check_results=checks(dict(result.metadata or {}))
    )
