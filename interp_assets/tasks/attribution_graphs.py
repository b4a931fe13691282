"""Phase 4: the pruned attribution graph of one behaviour over the key layers' SAE features:
nodes and edges (Parquet), circuit-tracer / Neuronpedia graph JSON, a picture, and how well the
linear estimate agrees with exact patching."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from interp_assets.artifacts import attribution_relpath, dashboards_relpath, prompts_relpath
from interp_assets.tasks.common import (
    TaskContext, TaskResult, combined_version, key_layers, load_model, load_saes, md, prompt_pairs,
    table_metadata,
)
from resources.storage import sha256_file


def task_attribution_graphs(ctx: TaskContext) -> TaskResult:
    """Phase 4: the pruned attribution graph of one behaviour over the key layers' SAE features."""
    import polars as pl

    from interp_assets.core.attribution import LOGIT, AttributionSettings, attribution_graph
    from interp_assets.core.attribution_checks import exact_patch_effects, rank_agreement
    from interp_assets.core.graph_export import graph_json, logit_node_id, node_ids, upload_name
    from interp_assets.core.hooks import decoder_layers, transformer_lens_name
    from interp_assets.core.plots import attribution_graph_figure, png_markdown

    config, section = ctx.config, ctx.config.attribution
    (behaviour,) = ctx.partition_keys
    layers = key_layers(config)
    prompts = ctx.store.read_parquet(prompts_relpath(behaviour))
    train = prompts.filter(pl.col("split") == "train")
    model, tokenizer = load_model(ctx)
    saes = load_saes(ctx, layers)
    pairs = prompt_pairs(tokenizer, train)
    ctx.log(f"attribution {behaviour}: {len(pairs)} train pairs ({pairs.n_unequal_length} left out: clean and "
            f"corrupted lengths differ), layers {layers}, {section.method}")
    settings = AttributionSettings(
        method=section.method, ig_steps=section.ig_steps, node_threshold=section.node_threshold,
        edge_threshold=section.edge_threshold, max_nodes_per_layer=section.max_nodes_per_layer,
        batch_size=config.baselines.batch_size,
    )
    pad = tokenizer.pad_token_id
    graph = attribution_graph(model, saes, pairs, config.activations.hook_point, settings, pad, log=ctx.log)

    # How good is the linear estimate? Patch the top features for real and compare.
    features = sorted((n for n in graph.nodes if n.kind == "feature"), key=lambda n: -abs(n.attribution))[:10]
    exact = exact_patch_effects(model, saes, pairs, features, config.activations.hook_point, pad, settings.batch_size)
    agreement = rank_agreement([n.attribution for n in features], exact)
    ctx.log(f"attribution {behaviour}: top-{len(features)} features, sign agreement with exact patching "
            f"{agreement['sign_agreement']:.2f}, Spearman {agreement['spearman']:.2f}")

    width = graph.max_length
    longest = max(range(len(pairs)), key=lambda i: len(pairs.clean[i]))
    prompt_ids = list(pairs.clean[longest])
    prompt_tokens = tokenizer.convert_ids_to_tokens(prompt_ids)
    row = pairs.rows[longest]
    target, foil = train["target"][row], train["foil"][row]
    target_id = pairs.target_ids[longest]
    n_model_layers = len(decoder_layers(model))
    ids = node_ids(graph, prompt_ids)
    logit_id = logit_node_id(graph, n_model_layers, target_id)
    exact_by_node = {id(n): e for n, e in zip(features, exact, strict=True)}
    nodes_table = pl.DataFrame({
        "node_id": ids,
        "layer": [n.layer for n in graph.nodes],
        "offset": [n.offset for n in graph.nodes],
        "ctx_idx": [width + n.offset for n in graph.nodes],
        "feature": [n.feature for n in graph.nodes],
        "feature_type": [n.kind for n in graph.nodes],
        "attribution": [n.attribution for n in graph.nodes],
        "influence": graph.influence,
        "activation_clean": [n.activation_clean for n in graph.nodes],
        "activation_corrupted": [n.activation_corrupted for n in graph.nodes],
        "exact_patch_effect": [exact_by_node.get(id(n)) for n in graph.nodes],
    }, schema_overrides={"exact_patch_effect": pl.Float64, "influence": pl.Float64})
    logit_layer = n_model_layers + 1
    edges_table = pl.DataFrame({
        "source": [ids[e.source] for e in graph.edges],
        "target": [logit_id if e.target == LOGIT else ids[e.target] for e in graph.edges],
        "weight": [e.weight for e in graph.edges],
        "source_layer": [graph.nodes[e.source].layer for e in graph.edges],
        "target_layer": [logit_layer if e.target == LOGIT else graph.nodes[e.target].layer for e in graph.edges],
    }, schema={"source": pl.String, "target": pl.String, "weight": pl.Float64,
               "source_layer": pl.Int64, "target_layer": pl.Int64})
    hook_names = {layer: transformer_lens_name(config.activations.hook_point, layer) for layer in layers}
    metric_label = f"logit({target!r}) − logit({foil!r})"
    document = graph_json(
        graph, slug=upload_name(f"{config.experiment.name}-{behaviour}"), scan=upload_name(config.model.name),
        prompt=train["clean"][row], prompt_tokens=prompt_tokens, prompt_token_ids=prompt_ids, target_token_id=target_id,
        hook_names=hook_names, n_model_layers=n_model_layers, metric_label=metric_label,
        feature_label=dashboard_labels(ctx, graph),
    )
    labels = {n["node_id"]: n["clerp"] for n in document["nodes"]}
    png = attribution_graph_figure(
        [{"layer": n.layer, "offset": n.offset, "feature": n.feature, "attribution": n.attribution,
          "kind": n.kind, "label": labels[i]} for n, i in zip(graph.nodes, ids, strict=True)],
        [{"source_index": e.source, "target_index": e.target, "weight": e.weight} for e in graph.edges],
        f"{behaviour}: attribution graph ({len(graph.nodes)} nodes, {len(graph.edges)} edges)",
        logit_label=metric_label,
    )
    summary = {
        "behaviour": behaviour, "key_layers": layers, "method": section.method, "n_prompts": graph.n_prompts,
        "n_pairs_left_out": pairs.n_unequal_length, "n_nodes": len(graph.nodes), "n_edges": len(graph.edges),
        "n_feature_nodes": sum(n.kind == "feature" for n in graph.nodes),
        "n_error_nodes": sum(n.kind == "error" for n in graph.nodes),
        "n_embedding_nodes": sum(n.kind == "embedding" for n in graph.nodes),
        "n_logit_edges": sum(e.target == LOGIT for e in graph.edges),
        "mean_logit_diff_clean": graph.mean_logit_diff_clean,
        "mean_logit_diff_corrupted": graph.mean_logit_diff_corrupted,
        "layer_totals": {str(k): v for k, v in graph.layer_totals.items()},
        "agreement_with_exact_patching": agreement,
    }
    relpath = attribution_relpath(config, behaviour)
    with tempfile.TemporaryDirectory(prefix="attribution-") as tmp:
        nodes_table.write_parquet(Path(tmp) / "nodes.parquet")
        edges_table.write_parquet(Path(tmp) / "edges.parquet")
        (Path(tmp) / "graph.json").write_text(json.dumps(document, indent=1, allow_nan=False))
        (Path(tmp) / "graph.png").write_bytes(png)
        (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        versions = {name: sha256_file(Path(tmp) / name) for name in ("nodes.parquet", "edges.parquet", "graph.json")}
        ctx.store.put_dir(relpath, tmp)
    top = nodes_table.filter(pl.col("feature_type") != "embedding").sort(pl.col("attribution").abs(), descending=True).head(10)
    return TaskResult(
        metadata={
            "path": ctx.store.url(relpath),
            "n_nodes": len(graph.nodes),
            "n_feature_nodes": summary["n_feature_nodes"],
            "n_edges": len(graph.edges),
            "n_logit_edges": summary["n_logit_edges"],
            "n_prompts": graph.n_prompts,
            "key_layers": {"raw_value": layers, "type": "json"},
            "method": section.method,
            "mean_logit_diff_clean": graph.mean_logit_diff_clean,
            "mean_logit_diff_corrupted": graph.mean_logit_diff_corrupted,
            "sign_agreement_with_exact_patching": agreement["sign_agreement"],
            "spearman_with_exact_patching": agreement["spearman"],
            "layer_totals": {"raw_value": summary["layer_totals"], "type": "json"},
            "top_nodes": table_metadata(top, {"node_id": str, "layer": int, "offset": int, "feature": int,
                                              "attribution": float, "exact_patch_effect": float}),
            "graph": md(png_markdown(png, f"{behaviour} attribution graph")),
            "features_used_most": md(used_features_markdown(ctx, nodes_table, config.dashboards.features_in_ui)),
        },
        data_version=combined_version(versions),
    )


def used_features_markdown(ctx: TaskContext, nodes_table, n: int) -> str:  # noqa: ANN001
    """The ``n`` features this graph relies on most (feature nodes by influence on the logit, a
    feature counted once over its positions), each with its dashboard: label, density, top contexts
    and promoted tokens, one table per layer."""
    import polars as pl

    from interp_assets.tasks.feature_dashboards import features_markdown

    features = (nodes_table.filter(pl.col("feature_type") == "feature")
                .group_by("layer", "feature").agg(pl.col("influence").max())
                .sort(["influence", "layer", "feature"], descending=[True, False, False]).head(n))
    parts = []
    for layer in sorted(set(features["layer"].to_list())):
        chosen = features.filter(pl.col("layer") == layer)["feature"].to_list()
        relpath = dashboards_relpath(ctx.config, layer)
        latents = ctx.store.read_parquet(f"{relpath}/latents.parquet").filter(pl.col("latent").is_in(chosen))
        contexts = ctx.store.read_parquet(f"{relpath}/contexts.parquet").filter(pl.col("latent").is_in(chosen))
        rows = {row["latent"]: row for row in latents.iter_rows(named=True)}
        parts += [f"**layer {layer}**", "", features_markdown(rows, contexts.to_dict(as_series=False), chosen), ""]
    return "\n".join(parts) if parts else "no feature node in this graph"


def dashboard_labels(ctx: TaskContext, graph) -> Any:  # noqa: ANN001
    """Each feature node's ``clerp``: its latent's dashboard label (core.dashboards.feature_label,
    the tokens it fires on → the tokens it promotes), read from the layer's ``latents.parquet``."""
    from interp_assets.core.graph_export import labels_from

    mapping = {}
    for layer in sorted({n.layer for n in graph.nodes if n.kind == "feature"}):
        relpath = f"{dashboards_relpath(ctx.config, layer)}/latents.parquet"
        if not ctx.store.exists(relpath):
            raise RuntimeError(f"layer {layer}: no feature dashboards at {ctx.store.url(relpath)}: "
                               "materialize feature_dashboards first (graph nodes are labelled from them)")
        latents = ctx.store.read_parquet(relpath)
        wanted = {n.feature for n in graph.nodes if n.kind == "feature" and n.layer == layer}
        for row in latents.filter(latents["latent"].is_in(sorted(wanted))).iter_rows(named=True):
            mapping[(layer, int(row["latent"]))] = row["label"]
    return labels_from(mapping)
