"""Phase 4: attribution graphs over the SAE features of the key layers, per behaviour: nodes and
edges (Parquet), a graph JSON that circuit-tracer's and Neuronpedia's viewers open, and a picture
of the pruned graph in the UI. See interp_assets/core/attribution.py for the definitions."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import math

import dagster as dg

from interp_assets.assets._common import code_version, run_worker_with_checks
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import behaviour_partitions, trained_saes_asset
from resources.compute import ComputeResource

LOGIC_VERSION = "2"
MIN_SIGN_AGREEMENT = 0.7
"""Share of the top features whose attribution has the sign of their exact patching effect."""


def attribution_checks(metadata: dict) -> list[dg.AssetCheckResult]:
    n_features = int(metadata["n_feature_nodes"].value)
    sign = float(metadata["sign_agreement_with_exact_patching"].value)
    spearman = float(metadata["spearman_with_exact_patching"].value)
    return [
        dg.AssetCheckResult(
            check_name="graph_not_empty",
            passed=n_features > 0,
            metadata={"n_feature_nodes": n_features, "n_nodes": int(metadata["n_nodes"].value),
                      "n_edges": int(metadata["n_edges"].value)},
        ),
        dg.AssetCheckResult(
            check_name="attribution_agrees_with_patching",
            passed=not math.isnan(sign) and sign >= MIN_SIGN_AGREEMENT,
            metadata={"sign_agreement": sign, "spearman": spearman, "min_sign_agreement": MIN_SIGN_AGREEMENT},
        ),
    ]


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=behaviour_partitions(config),
        deps=[
            dg.AssetDep(trained_saes_asset(config), partition_mapping=dg.AllPartitionMapping()),
            # Each feature node's clerp is its dashboard's label (top tokens in and out).
            dg.AssetDep("feature_dashboards", partition_mapping=dg.AllPartitionMapping()),
            "prompts",
            "baselines",
            "language_model",
        ],
        # The hook point and layers it reads reach it through the saes partitions' data versions.
        code_version=code_version(config, LOGIC_VERSION, "attribution"),
        group_name="study",
        kinds={"pytorch", "parquet"},
        pool=config.pool("attribution_graphs"),
        check_specs=[
            dg.AssetCheckSpec("graph_not_empty", asset="attribution_graphs", blocking=True,
                              description="at least one SAE feature node survives pruning"),
            dg.AssetCheckSpec("attribution_agrees_with_patching", asset="attribution_graphs",
                              description=f"the top features' attributions have the sign of their exact patching "
                                          f"effect for ≥ {MIN_SIGN_AGREEMENT:.0%} of them (Spearman reported)"),
        ],
        description=__doc__,
    )
    def attribution_graphs(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        return run_worker_with_checks(context, compute, task="attribution_graphs", config=config,
                                      checks=attribution_checks)

    return [attribution_graphs]
