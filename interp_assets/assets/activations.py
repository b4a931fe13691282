"""Phase 2: activations at the configured hook point for the behaviour prompts' last N tokens and
for an SAE-training token corpus; a backfill of layer partitions is ONE run and ONE forward pass
per batch for all its layers. Stored per layer as safetensors shards + a manifest."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, run_worker
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import layer_partitions
from resources.compute import ComputeResource

LOGIC_VERSION = "2"


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=layer_partitions(config),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["language_model", dg.AssetDep("prompts", partition_mapping=dg.AllPartitionMapping())],
        code_version=code_version(config, LOGIC_VERSION, "experiment", "model", "activations", "corpus"),
        group_name="study",
        kinds={"pytorch", "safetensors"},
        pool=config.pool("activations"),
        description=__doc__,
    )
    def activations(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        return run_worker(context, compute, task="activations", config=config)

    return [activations]
