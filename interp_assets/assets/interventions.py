"""Phase 5: feature ablation, activation patching and resample ablation tables, per behaviour,
one row per experiment; and the faithfulness of the graph's circuits against their size.
See interp_assets/core/interventions.py for the definitions."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, run_worker_with_checks
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import behaviour_partitions, trained_saes_asset
from resources.compute import ComputeResource

LOGIC_VERSION = "2"
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
        denominator_check(metadata),
    ]


def denominator_check(metadata: dict) -> dg.AssetCheckResult:
    """Faithfulness is a ratio over F(M) − F(∅); when that denominator's 95 % CI reaches below
    interventions.min_faithfulness_denominator logits the ratio cannot support a claim, so the
    check fails and says why."""
    denominator = float(metadata["faithfulness_denominator"].value)
    low, high = metadata["faithfulness_denominator_ci"].value
    minimum = float(metadata["min_faithfulness_denominator"].value)
    passed = low >= minimum
    reason = (f"F(M) − F(∅) = {denominator:.3g} logits (95 % CI {low:.3g} to {high:.3g}) "
              + (f"lies above {minimum:g}: the faithfulness ratios rest on a measurable effect" if passed else
                 f"reaches below interventions.min_faithfulness_denominator = {minimum:g}: mean-ablating every node of the key "
                 "layers barely moves the metric, so faithfulness and completeness ratios over it are noise; the "
                 "behaviour runs elsewhere (e.g. attention) or the key layers miss it"))
    return dg.AssetCheckResult(
        check_name="faithfulness_denominator_large_enough", passed=passed,
        metadata={"denominator_logits": denominator, "denominator_ci": [low, high], "minimum": minimum,
                  "reason": reason},
        description=reason,
    )


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=behaviour_partitions(config),
        deps=[
            "attribution_graphs",
            dg.AssetDep(trained_saes_asset(config), partition_mapping=dg.AllPartitionMapping()),
            "prompts",
            "language_model",
        ],
        code_version=code_version(config, LOGIC_VERSION, "interventions"),
        group_name="study",
        kinds={"pytorch", "parquet"},
        pool=config.pool("interventions"),
        check_specs=[
            dg.AssetCheckSpec("patching_controls_hold", asset="interventions", blocking=True,
                              description="patching nothing recovers 0 and patching the last residual stream "
                                          "everywhere recovers 1 (the metric and the hooks are sound)"),
            dg.AssetCheckSpec("faithfulness_denominator_large_enough", asset="interventions", blocking=False,
                              description="F(M) − F(∅), what the key layers carry in logits, is at least "
                                          "interventions.min_faithfulness_denominator, so faithfulness is not noise"),
        ],
        description=__doc__,
    )
    def interventions(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        return run_worker_with_checks(context, compute, task="interventions", config=config,
                                      checks=intervention_checks)

    return [interventions]
