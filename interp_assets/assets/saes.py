"""Phase 3: one sparse autoencoder per layer (in a sweep, per layer × variant of ``sae_variants``),
trained on that layer's activations. A backfill of a range of partitions is one run; locally the
SAEs train one after another in one worker (on SLURM, one array job). Output per partition: a
SAELens-loadable folder + our training record."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, run_worker_with_checks
from interp_assets.config import ExperimentConfig
from interp_assets.partitions import layer_to_sae, sae_partitions
from resources.compute import ComputeResource

LOGIC_VERSION = "2"


def sae_checks(metadata: dict, min_explained_variance: float, max_dead_fraction: float) -> list[dg.AssetCheckResult]:
    """The spec's validation bar, per partition of the run: every SAE must pass."""
    explained = {k: float(v) for k, v in metadata["explained_variance"].value.items()}
    dead = {k: float(v) for k, v in metadata["dead_fraction"].value.items()}
    return [
        dg.AssetCheckResult(
            check_name="explained_variance_above_threshold",
            passed=all(value >= min_explained_variance for value in explained.values()),
            metadata={"explained_variance_by_layer": explained, "min_observed": min(explained.values()),
                      "threshold": min_explained_variance},
        ),
        dg.AssetCheckResult(
            check_name="dead_fraction_below_bound",
            passed=all(value <= max_dead_fraction for value in dead.values()),
            metadata={"dead_fraction_by_layer": dead, "max_observed": max(dead.values()), "bound": max_dead_fraction},
        ),
    ]


def upstream(config: ExperimentConfig) -> tuple[list, tuple[str, ...]]:
    """(deps, config sections in the code version) for the configured data source.

    cached: trained from the stored ``activations``, whose data version carries the model, corpus
    and capture settings; ``corpus`` is read directly too (the held-out windows every figure is
    judged on). stream: the worker runs the model on the corpus itself, so ``activations`` is no
    dependency (it need never be materialized) and the sections that define the stream
    (``experiment`` seeds the generated corpus; ``activations`` holds hook point and dtype) join
    the code version instead."""
    sweep = ("sae_variants",) if config.sae_variants else ()  # without a sweep: the code versions it always had
    if config.sae.data_source == "stream":
        return ["language_model"], ("experiment", "activations", "corpus", "sae", *sweep)
    return [dg.AssetDep("activations", partition_mapping=layer_to_sae(config)), "language_model"], ("corpus", "sae", *sweep)


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    deps, sections = upstream(config)

    @dg.asset(
        partitions_def=sae_partitions(config),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=deps,
        code_version=code_version(config, LOGIC_VERSION, *sections),
        group_name="study",
        kinds={"pytorch", "safetensors"},
        pool=config.pool("saes"),
        check_specs=[
            dg.AssetCheckSpec("explained_variance_above_threshold", asset="saes", blocking=True,
                              description="held-out explained variance (R²) ≥ sae.min_explained_variance on every SAE of the run"),
            dg.AssetCheckSpec("dead_fraction_below_bound", asset="saes",
                              description="fraction of dead features ≤ sae.max_dead_fraction on every SAE of the run"),
        ],
        description=__doc__,
    )
    def saes(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        return run_worker_with_checks(context, compute, task="saes", config=config,
                                      checks=lambda metadata: sae_checks(metadata, config.sae.min_explained_variance,
                                                                         config.sae.max_dead_fraction))

    return [saes]
