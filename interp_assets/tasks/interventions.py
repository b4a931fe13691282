"""Phase 5: ablation, patching and resampling experiments, written as they finish so a killed
run resumes where it stopped; then the faithfulness curve of the graph's circuits."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from interp_assets.artifacts import (
    attribution_relpath, interventions_checkpoint_relpath, interventions_relpath, prompts_relpath,
)
from interp_assets.core.progress import Progress
from interp_assets.tasks.common import (
    TaskContext, TaskResult, combined_version, key_layers, load_model, load_saes, md, prompt_pairs, sae_in_use_relpath,
    table_metadata,
)
from resources.storage import sha256_file


def _experiments_fingerprint(ctx: TaskContext, behaviour: str, layers: list[int]) -> str:
    """Everything an experiment's result depends on: a mismatch discards earlier partial results."""
    store, config = ctx.store, ctx.config
    parts = {
        "interventions": config.interventions.model_dump(mode="json"),
        "hook_point": config.activations.hook_point,
        "prompts": hashlib.sha256(store.read_bytes(prompts_relpath(behaviour))).hexdigest(),
        "nodes": hashlib.sha256(store.read_bytes(f"{attribution_relpath(config, behaviour)}/nodes.parquet")).hexdigest(),
        # training.json records each SAE's weights sha256: no re-reading GBs of weights per layer.
        "saes": {layer: store.read_json(f"{sae_in_use_relpath(config, store, layer)}/training.json")["summary"]["weights_sha256"]
                 for layer in layers},
        "model": config.model.model_dump(mode="json"),
        "batch_size": config.baselines.batch_size,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def task_interventions(ctx: TaskContext) -> TaskResult:
    """Phase 5: ablation, patching and resampling experiments, written as they finish so a killed
    run resumes where it stopped; then the faithfulness curve of the graph's circuits."""
    import polars as pl

    from interp_assets.core.circuit_stats import faithfulness_table
    from interp_assets.core.interventions import InterventionRunner, SaeCache, plan_experiments, summarise
    from interp_assets.core.plots import faithfulness_figure, png_markdown

    config, section = ctx.config, ctx.config.interventions
    (behaviour,) = ctx.partition_keys
    store = ctx.store
    graph_relpath = attribution_relpath(config, behaviour)
    if not store.is_complete_dir(graph_relpath):
        raise RuntimeError(f"no attribution graph at {store.url(graph_relpath)}: materialize attribution_graphs first")
    nodes = (store.read_parquet(f"{graph_relpath}/nodes.parquet")
             .filter(pl.col("feature_type").is_in(["feature", "error"]))  # key-layer nodes: circuits hold these
             .sort(pl.col("attribution").abs(), descending=True))
    ranked_all = [(r["layer"], r["offset"], r["feature"]) for r in nodes.iter_rows(named=True)]
    ranked_features = [node for node in ranked_all if node[2] >= 0]
    layers = sorted(section.patching_layers or config.activations.layers)
    circuit_layers = key_layers(config)

    prompts = store.read_parquet(prompts_relpath(behaviour))
    test = prompts.filter(pl.col("split") == "test")
    model, tokenizer = load_model(ctx)
    # Key layers' SAEs stay loaded; the patching sweep reads each other layer's SAE when it gets there.
    saes = SaeCache(lambda layer: load_saes(ctx, [layer])[layer], sorted({*layers, *circuit_layers}), circuit_layers,
                    next(model.parameters()).device)
    test_pairs = prompt_pairs(tokenizer, test)
    patching_pairs = prompt_pairs(tokenizer, test.head(section.patching_pairs))
    runner = InterventionRunner(model, saes, config.activations.hook_point,
                                {"test": test_pairs, "patching": patching_pairs}, tokenizer.pad_token_id,
                                circuit_layers=circuit_layers, batch_size=config.baselines.batch_size)
    experiments = plan_experiments(ranked_features, layers, patching_pairs.max_length, section.ablation_groups,
                                   section.patching_positions, section.resample_samples)

    # Finished experiments so far: parts written every `checkpoint_every` experiments.
    checkpoint = interventions_checkpoint_relpath(config, behaviour)
    fingerprint = _experiments_fingerprint(ctx, behaviour, sorted({*layers, *circuit_layers}))
    done: dict[str, dict[str, Any]] = {}
    if store.exists(f"{checkpoint}/fingerprint.json") and store.read_json(f"{checkpoint}/fingerprint.json") == fingerprint:
        for name in sorted(store.list(checkpoint)):
            if name.startswith("part-") and name.endswith(".parquet"):
                for row in store.read_parquet(f"{checkpoint}/{name}").iter_rows(named=True):
                    done[row["experiment_id"]] = row
    else:
        for name in store.list(checkpoint) if store.exists(checkpoint) else []:
            store.delete(f"{checkpoint}/{name}")
        store.write_json(f"{checkpoint}/fingerprint.json", fingerprint)
    pending = [e for e in experiments if e.id not in done]
    ctx.log(f"interventions {behaviour}: {len(experiments)} experiments, {len(experiments) - len(pending)} already "
            f"done (resumed), computing {len(pending)}")
    next_part = len([n for n in (store.list(checkpoint) if store.exists(checkpoint) else []) if n.startswith("part-")])
    buffer: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal next_part
        if buffer:
            store.write_parquet(f"{checkpoint}/part-{next_part:05d}.parquet", pl.DataFrame(buffer, schema=_experiment_schema()))
            next_part += 1
            buffer.clear()

    progress = Progress(len(experiments), ctx.log, label=f"interventions {behaviour}", unit="experiment",
                        start=len(experiments) - len(pending))
    for count, experiment in enumerate(pending, start=1):
        result = runner.run(experiment)
        ld_clean, ld_corrupt = runner.baseline(experiment.prompt_set)
        row = {
            "experiment_id": experiment.id, "family": experiment.family, "variant": experiment.variant,
            "prompt_set": experiment.prompt_set, "layer": experiment.layer, "position": experiment.offset,
            "group": experiment.group, "n_nodes": len(experiment.nodes), "samples": experiment.samples,
            "nodes": json.dumps([list(node) for node in experiment.nodes]),
            **summarise(experiment.id, result.ld, result.kl, ld_clean, ld_corrupt, section.bootstrap_samples,
                        delta_from="corrupted" if experiment.prompt_set == "patching" else "clean"),
        }
        done[experiment.id] = row
        buffer.append(row)
        if len(buffer) >= section.checkpoint_every:
            flush()
        progress.update(len(experiments) - len(pending) + count)
    flush()

    table = pl.DataFrame([done[e.id] for e in experiments], schema=_experiment_schema())
    sizes = sorted({0, *(round(len(ranked_all) * k / section.ablation_groups) for k in range(1, section.ablation_groups + 1))})
    curve = pl.DataFrame(faithfulness_table(runner, "test", ranked_all, sizes, section.bootstrap_samples,
                                            section.random_circuit_draws, behaviour))
    png = faithfulness_figure(curve.to_dicts(), f"{behaviour}: faithfulness vs circuit size")
    relpath = interventions_relpath(config, behaviour)
    with tempfile.TemporaryDirectory(prefix="interventions-") as tmp:
        table.write_parquet(Path(tmp) / "experiments.parquet")
        curve.write_parquet(Path(tmp) / "faithfulness.parquet")
        (Path(tmp) / "faithfulness.png").write_bytes(png)
        versions = {name: sha256_file(Path(tmp) / name) for name in ("experiments.parquet", "faithfulness.parquet")}
        store.put_dir(relpath, tmp)
    for name in store.list(checkpoint):  # only once the final tables are published
        store.delete(f"{checkpoint}/{name}")

    def recovery(experiment_id: str) -> float:
        return float(table.filter(pl.col("experiment_id") == experiment_id)["recovery"][0])

    patching = table.filter(pl.col("family") == "activation_patching", pl.col("variant") == "raw",
                            pl.col("position") != 0)
    best = patching.sort("recovery", descending=True).head(5)
    full_circuit = curve.filter(pl.col("circuit_size") == max(sizes)).to_dicts()[0]
    return TaskResult(
        metadata={
            "path": store.url(relpath),
            "n_experiments": table.height,
            "n_computed": len(pending),
            "n_resumed": table.height - len(pending),
            "n_by_family": {"raw_value": dict(table.group_by("family").len().sort("family").iter_rows()), "type": "json"},
            "control_patch_nothing_recovery": recovery("activation_patching/control_nothing"),
            "control_patch_everything_recovery": recovery("activation_patching/control_everything"),
            "best_patching_sites": table_metadata(best, {"layer": int, "position": int, "recovery": float,
                                                         "recovery_ci_low": float, "recovery_ci_high": float,
                                                         "delta_ld": float, "delta_ld_ci_low": float,
                                                         "delta_ld_ci_high": float}),
            "faithfulness_full_graph": full_circuit["faithfulness"],
            "faithfulness_full_graph_ci": {"raw_value": [full_circuit["faithfulness_ci_low"],
                                                         full_circuit["faithfulness_ci_high"]], "type": "json"},
            "completeness_full_graph": full_circuit["completeness"],
            "complement_faithfulness_full_graph": full_circuit["complement_faithfulness"],
            "random_circuit_faithfulness_full_size": full_circuit["random_faithfulness_mean"],
            "faithfulness_denominator": full_circuit["denominator"],
            "faithfulness_denominator_ci": {"raw_value": [full_circuit["denominator_ci_low"],
                                                          full_circuit["denominator_ci_high"]], "type": "json"},
            "min_faithfulness_denominator": section.min_faithfulness_denominator,
            "faithfulness_by_size": {"raw_value": dict(zip(curve["circuit_size"].to_list(),
                                                           curve["faithfulness"].to_list(), strict=True)), "type": "json"},
            "faithfulness_curve": md(png_markdown(png, f"{behaviour} faithfulness")),
            "dagster/row_count": table.height,
        },
        data_version=combined_version(versions),
    )


def _experiment_schema() -> dict[str, Any]:
    """One row per experiment, one column per metric (fixed, so parts and the table always agree)."""
    import polars as pl

    columns = {
        pl.String: ("experiment_id", "family", "variant", "prompt_set", "nodes"),
        pl.Int64: ("layer", "position", "group", "n_nodes", "samples", "n_prompts"),
        pl.Float64: ("ld_clean", "ld_corrupted", "ld_patched", "ld_patched_ci_low", "ld_patched_ci_high", "recovery",
                     "recovery_ci_low", "recovery_ci_high", "delta_ld", "delta_ld_ci_low", "delta_ld_ci_high",
                     "kl_to_clean"),
    }
    return {name: dtype for dtype, names in columns.items() for name in names}
