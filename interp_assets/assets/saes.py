"""Phase 3: one sparse autoencoder per layer, trained on that layer's activations."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, not_implemented
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import layer_partitions
from resources.compute import ComputeResource

LOGIC_VERSION = "0"


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=layer_partitions(config),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["activations"],
        code_version=code_version(config, LOGIC_VERSION, "sae"),
        group_name="study",
        kinds={"pytorch", "safetensors"},
        pool="compute",
        description=__doc__,
    )
    def saes(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        not_implemented("saes", "issue 4: SAE trainer")

    return [saes]
