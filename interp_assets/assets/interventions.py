"""Phase 5: feature ablation, activation patching and resample ablation tables, per behaviour."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, not_implemented
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import behaviour_partitions
from resources.compute import ComputeResource

LOGIC_VERSION = "0"


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=behaviour_partitions(config),
        deps=[
            "attribution_graphs",
            dg.AssetDep("saes", partition_mapping=dg.AllPartitionMapping()),
            "prompts",
        ],
        code_version=code_version(config, LOGIC_VERSION, "interventions"),
        group_name="study",
        kinds={"pytorch", "parquet"},
        pool="compute",
        description=__doc__,
    )
    def interventions(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        not_implemented("interventions", "issue 6: attribution graphs and interventions")

    return [interventions]
