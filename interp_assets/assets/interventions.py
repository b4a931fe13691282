"""Phase 5: feature ablation, activation patching and resample ablation tables, per behaviour,
one row per experiment; and the faithfulness of the graph's circuits against their size.
See interp_assets/core/interventions.py for the definitions."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, run_worker_with_checks
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import behaviour_partitions
from resources.compute import ComputeResource

LOGIC_VERSION = "1"
CONTROL_TOLERANCE = 1e-3


def intervention_checks(metadata: dict) -> list[dg.AssetCheckResult]:
    nothing = float(metadata["control_patch_nothing_recovery"].value)
    everything = float(metadata["control_patch_everything_recovery"].value)
    return [
        dg.AssetCheckResult(
            check_name="patching_controls_hold",
            passed=abs(nothing) <= CONTROL_TOLERANCE and abs(everything - 1.0) <= CONTROL_TOLERANCE,
            metadata={"patch_nothing_recovery": nothing, "patch_everything_recovery": everything,
                      "tolerance": CONTROL_TOLERANCE},
        ),
    ]


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=behaviour_partitions(config),
        deps=[
            "attribution_graphs",
            dg.AssetDep("saes", partition_mapping=dg.AllPartitionMapping()),
            "prompts",
            "language_model",
        ],
        code_version=code_version(config, LOGIC_VERSION, "interventions"),
        group_name="study",
        kinds={"pytorch", "parquet"},
        pool="compute",
        check_specs=[
            dg.AssetCheckSpec("patching_controls_hold", asset="interventions", blocking=True,
                              description="patching nothing recovers 0 and patching the last residual stream "
                                          "everywhere recovers 1 (the metric and the hooks are sound)"),
        ],
        description=__doc__,
    )
    def interventions(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        return run_worker_with_checks(context, compute, task="interventions", config=config,
                                      checks=intervention_checks)

    return [interventions]
