"""Phase 3 of an SAE sweep: one variant of ``sae_variants`` chosen per layer by the rule in
``sae_selection`` (core/sae_selection.py), from every variant's held-out figures, beside the
layer's L0-vs-fidelity Pareto front. The phases after it (dashboards, graphs, interventions) read
the chosen SAE. Its code version is the rule alone, so a changed rule stales this asset and what
follows, never the trained SAEs. Built only when the config has ``sae_variants``."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.artifacts import sae_selection_relpath, saes_relpath
from interp_assets.assets._common import code_version, tag_run
from interp_assets.config import ExperimentConfig, sae_key
from interp_assets.core.sae_selection import Candidate, SelectionError, pareto_front, select_variant
from interp_assets.partitions import layer_partitions, sae_to_layer
from interp_assets.tasks.common import combined_version
from resources.storage import ArtifactStore, open_store

LOGIC_VERSION = "1"


def variant_figures(config: ExperimentConfig, store: ArtifactStore, layer: int) -> list[dict]:
    """Every variant's published held-out figures for one layer, checked to be the SAE its
    current settings describe (else it was not retrained since the variant changed)."""
    figures, problems = [], []
    for variant in config.sae_variants:
        variant_config = config.for_variant(variant)
        relpath = saes_relpath(variant_config, layer)
        if not store.is_complete_dir(relpath):
            problems.append(f"saes {sae_key(layer, variant)} has no trained SAE at {store.url(relpath)}")
            continue
        record = store.read_json(f"{relpath}/training.json")
        if record["config"] != variant_config.sae.model_dump(mode="json"):
            changed = sorted(k for k, v in variant_config.sae.model_dump(mode="json").items()
                             if record["config"].get(k) != v)
            problems.append(f"saes {sae_key(layer, variant)} was trained with other settings than the config's "
                            f"({', '.join(changed)} differ)")
            continue
        figures.append({"variant": variant, "relpath": relpath, **record["summary"]})
    if problems:
        raise RuntimeError(f"layer {layer}: cannot choose between variants: {'; '.join(problems)}. Materialize "
                           "those saes partitions first")
    return figures


def choose(config: ExperimentConfig, figures: list[dict], layer: int) -> tuple[dict, list[dict]]:
    """(the chosen variant's figures, one row per variant for the record and the UI)."""
    rule = config.sae_selection
    candidates = [Candidate(f["variant"], float(f["l0"]), f.get(rule.metric)) for f in figures]
    try:
        chosen = select_variant(candidates, rule.higher_is_better, rule.max_l0)
    except SelectionError as error:
        raise RuntimeError(f"layer {layer}: sae_selection ({rule.describe()}): {error}") from None
    front = pareto_front(candidates, rule.higher_is_better)
    rows = [{
        "variant": f["variant"],
        "chosen": f["variant"] == chosen.variant,
        "l0": float(f["l0"]),
        rule.metric: f.get(rule.metric),
        f"random_sae/{rule.metric}": f.get(f"random_sae/{rule.metric}"),
        "random_sae/l0": f.get("random_sae/l0"),
        "within_max_l0": rule.max_l0 is None or float(f["l0"]) <= rule.max_l0,
        "on_pareto_front": f["variant"] in front,
        "explained_variance": f["explained_variance"],
        "dead_fraction": f["dead_fraction"],
        "n_eval_tokens": int(f["n_eval_tokens"]),
        "ce_denominator_zero_ablation": f["ce_denominator_zero_ablation"],
        "architecture": f["architecture"],
        "d_sae": int(f["d_sae"]),
    } for f in figures]
    return next(f for f in figures if f["variant"] == chosen.variant), rows


def _table(rows: list[dict]) -> dg.TableMetadataValue:
    def kind(value: object) -> str:
        return {bool: "bool", int: "int", float: "float"}.get(type(value), "string")

    columns = list(rows[0])
    types = {c: next((kind(r[c]) for r in rows if r[c] is not None), "float") for c in columns}
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, types[c]) for c in columns]),
    )


def select_layer(config: ExperimentConfig, store: ArtifactStore, layer: int) -> tuple[dict, dict]:
    """Choose a layer's variant and write its record: (record, the partition's metadata)."""
    from interp_assets.core.plots import pareto_figure, png_markdown

    rule = config.sae_selection
    figures = variant_figures(config, store, layer)
    chosen, rows = choose(config, figures, layer)
    record = {
        "layer": layer,
        "variant": chosen["variant"],
        "sae_relpath": chosen["relpath"],
        "weights_sha256": chosen["weights_sha256"],
        "rule": {**rule.model_dump(mode="json"), "description": rule.describe()},
        "candidates": rows,
    }
    store.write_json(sae_selection_relpath(config, layer), record)
    points = [{"variant": r["variant"], "l0": r["l0"], "score": r[rule.metric], "random_l0": r["random_sae/l0"],
               "random_score": r[f"random_sae/{rule.metric}"]} for r in rows]
    png = pareto_figure(points, chosen["variant"], [r["variant"] for r in rows if r["on_pareto_front"]],
                        rule.metric, rule.max_l0, f"layer {layer}: {len(rows)} variants, held out")
    warnings = sorted({f["ce_warning"] for f in figures if "ce_warning" in f})
    metadata = {
        "variant": chosen["variant"],
        "rule": rule.describe(),
        rule.metric: chosen.get(rule.metric),
        "l0": float(chosen["l0"]),
        "n_eval_tokens": int(chosen["n_eval_tokens"]),
        "variants": _table(rows),
        "pareto": dg.MetadataValue.md(png_markdown(png, f"layer {layer}: L0 vs {rule.metric}")),
        "sae_path": store.url(chosen["relpath"]),
        "path": store.url(sae_selection_relpath(config, layer)),
    }
    if warnings and rule.metric.startswith("ce_loss_recovered"):
        metadata["ce_warning"] = " ".join(warnings)  # ranking by a noisy ratio: say so where the choice shows
    return record, metadata


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    if not config.sae_variants:
        return []

    @dg.asset(
        partitions_def=layer_partitions(config),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[dg.AssetDep("saes", partition_mapping=sae_to_layer(config))],
        code_version=code_version(config, LOGIC_VERSION, "sae_selection"),
        group_name="study",
        kinds={"json"},
        description=__doc__,
    )
    def sae_selection(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        # Light (a few JSON files and a plot): in the Dagster process, no worker and no job.
        tag_run(context, config)
        store = open_store(config.storage)
        chosen = {}
        for key in context.partition_keys:
            record, metadata = select_layer(config, store, int(key))
            context.add_asset_metadata(metadata, partition_key=key)
            context.log.info(f"layer {key}: {record['variant']} ({config.sae_selection.describe()})")
            chosen[key] = record
        return dg.MaterializeResult(
            metadata={"selected": dg.MetadataValue.json({k: r["variant"] for k, r in chosen.items()})},
            # The choice and the chosen weights: a rule change that picks the same SAEs changes nothing downstream.
            data_version=dg.DataVersion(combined_version(
                {k: f"{r['variant']}:{r['weights_sha256']}" for k, r in chosen.items()})),
        )

    return [sae_selection]
