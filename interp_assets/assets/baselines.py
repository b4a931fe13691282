"""Phase 1: per-prompt logit difference target−foil, p(target) and correctness on clean and
corrupted prompts, with the checks that the model really has each behaviour."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, run_worker_with_checks
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import behaviour_partitions
from resources.compute import ComputeResource

LOGIC_VERSION = "1"


def baseline_checks(metadata: dict, min_accuracy: float) -> list[dg.AssetCheckResult]:
    """Chance is 0.5 (two answers); a corruption that swaps the evidence must flip the sign."""
    accuracy = float(metadata["accuracy_clean"].value)
    ld_clean = float(metadata["mean_logit_diff_clean"].value)
    ld_corrupted = float(metadata["mean_logit_diff_corrupted"].value)
    return [
        dg.AssetCheckResult(
            check_name="accuracy_above_chance",
            passed=accuracy >= min_accuracy,
            metadata={"accuracy_clean": accuracy, "threshold": min_accuracy, "chance": 0.5},
        ),
        dg.AssetCheckResult(
            check_name="corruption_flips_preference",
            passed=ld_clean > 0 > ld_corrupted,
            metadata={"mean_logit_diff_clean": ld_clean, "mean_logit_diff_corrupted": ld_corrupted},
        ),
    ]


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=behaviour_partitions(config),
        deps=["language_model", "prompts"],
        code_version=code_version(config, LOGIC_VERSION, "model", "baselines"),
        group_name="study",
        kinds={"pytorch", "parquet"},
        pool=config.pool("baselines"),
        check_specs=[
            dg.AssetCheckSpec("accuracy_above_chance", asset="baselines", blocking=True,
                              description="clean accuracy (LD > 0) reaches baselines.min_accuracy"),
            dg.AssetCheckSpec("corruption_flips_preference", asset="baselines", blocking=True,
                              description="mean LD > 0 on clean prompts and < 0 on corrupted ones"),
        ],
        description=__doc__,
    )
    def baselines(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        return run_worker_with_checks(context, compute, task="baselines", config=config,
                                      checks=lambda metadata: baseline_checks(metadata, config.baselines.min_accuracy))

    return [baselines]
