"""Phase 3b: feature dashboards, one per SAE layer: for every latent its top activating contexts
(with each token's activation), activation density, mean and max activation, and the output
tokens its decoder direction promotes and suppresses; read from held-out corpus text in one
streaming pass. Stored as Parquet + one SAEDashboard / Neuronpedia batch JSON per layer; the
layer's most used features show here with their contexts."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, run_worker_with_checks
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import layer_partitions, trained_saes_asset
from resources.compute import ComputeResource

LOGIC_VERSION = "2"  # 2: per-feature activation and logit histograms, a density plot
SECTIONS = ("experiment", "activations", "corpus", "dashboards")
"""Config the worker reads besides the SAE: the text (``experiment`` seeds the generated corpus,
``corpus`` says what the held-out windows are made of, its bytes included; ``activations`` holds
the hook point) and the settings. The
model and the SAE reach it through the data versions of ``language_model`` and ``saes`` (in a sweep,
``sae_selection``)."""


def dashboard_checks(metadata: dict) -> list[dg.AssetCheckResult]:
    inconsistent = {k: int(v) for k, v in metadata["inconsistent_contexts"].value.items()}
    return [
        dg.AssetCheckResult(
            check_name="top_contexts_consistent",
            passed=all(count == 0 for count in inconsistent.values()),
            metadata={"inconsistent_contexts_by_layer": inconsistent},
        ),
    ]


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=layer_partitions(config),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[trained_saes_asset(config), "language_model"],
        code_version=code_version(config, LOGIC_VERSION, *SECTIONS),
        group_name="study",
        kinds={"pytorch", "parquet"},
        pool=config.pool("feature_dashboards"),
        check_specs=[
            dg.AssetCheckSpec(
                "top_contexts_consistent", asset="feature_dashboards",
                description="every stored context's marked token carries its recorded activation, contexts are "
                            "ranked by activation, the first is the latent's max, and each latent keeps "
                            "min(top_k, tokens it fired on) of them",
            ),
        ],
        description=__doc__,
    )
    def feature_dashboards(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        return run_worker_with_checks(context, compute, task="feature_dashboards", config=config,
                                      checks=dashboard_checks)

    return [feature_dashboards]
