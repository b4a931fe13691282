"""Phase 3b: a feature dashboard for every latent of each layer's SAE, from ONE streaming pass over
held-out text per layer (see ``interp_assets/core/dashboards.py``): per-latent statistics and top
contexts as Parquet, the layer's dashboards as one SAEDashboard / Neuronpedia batch JSON, and the
layer's most used features with their contexts in the asset's metadata."""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp_assets.artifacts import dashboards_relpath
from interp_assets.config import ExperimentConfig
from interp_assets.tasks.common import (
    TaskContext, TaskResult, combined_version, corpus_windows, load_model, load_saes, md, sae_in_use_relpath,
)
from resources.storage import sha256_file

DASHBOARD_FORMAT = 2
"""Bumped when what a layer's folder holds changes (2: activation and logit histograms), so a
finished layer of an older format is rebuilt, not skipped."""

DASHBOARD_FILES = ("latents.parquet", "contexts.parquet", "features.json")
"""The files whose bytes make a layer's data version (summary.json holds the run's record)."""


@dataclass(frozen=True)
class DashboardText:
    batches: list[Any]
    """(token ids [batch, seq], attention mask [batch, seq]) per forward pass."""
    n_windows: int
    seq_len: int
    description: str
    """Where the tokens come from, as the JSON's ``dataset`` and the metadata say it."""


def dashboard_windows(config: ExperimentConfig, tokenizer) -> DashboardText:  # noqa: ANN001
    """The evaluation text of every layer's dashboards: the first ``dashboards.n_texts`` of the
    corpus's held-out windows (core/corpus.py: documents no SAE trained on, packed as for
    training), in batches of ``dashboards.batch_size`` with their attention masks."""
    from interp_assets.core.corpus import describe

    from interp_assets.config import corpus_spec

    section = config.dashboards
    windows = corpus_windows(config, tokenizer, held_out=True)[: section.n_texts].long()
    mask = windows >= 0  # a document-packed window's padding is no token
    ids = windows.masked_fill(~mask, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    batches = [(ids[i : i + section.batch_size], mask[i : i + section.batch_size].long())
               for i in range(0, len(ids), section.batch_size)]
    seq_len = config.corpus.seq_len
    return DashboardText(batches, len(ids), seq_len,
                         f"{describe(corpus_spec(config))}: {len(ids)} held-out windows of {seq_len} tokens")


def _settings(config: ExperimentConfig):  # noqa: ANN202
    from interp_assets.core.dashboards import DashboardSettings

    section = config.dashboards
    return DashboardSettings(top_k=section.top_k, context_before=section.context_before,
                             context_after=section.context_after, n_logit_tokens=section.n_logit_tokens)


def _fingerprint(ctx: TaskContext, layer: int) -> str:
    """What a layer's dashboards are a function of: the SAE's weights and the sections that choose
    the text and the settings."""
    training = ctx.store.read_json(f"{sae_in_use_relpath(ctx.config, ctx.store, layer)}/training.json")
    return hashlib.sha256(json.dumps({
        "format": DASHBOARD_FORMAT,
        "sae_weights": training["summary"]["weights_sha256"],
        "sections": ctx.config.section_hash("experiment", "model", "activations", "dashboards"),
    }, sort_keys=True).encode()).hexdigest()


def task_feature_dashboards(ctx: TaskContext) -> TaskResult:
    """Every layer of the run: one streaming pass each over the same held-out windows."""
    config = ctx.config
    layers = sorted(int(key) for key in ctx.partition_keys)
    model, tokenizer = load_model(ctx)
    text = None
    versions, partitions = {}, {}
    for layer in layers:
        relpath = dashboards_relpath(config, layer)
        fingerprint = _fingerprint(ctx, layer)
        if ctx.store.is_complete_dir(relpath) and ctx.store.read_json(f"{relpath}/summary.json").get("fingerprint") == fingerprint:
            ctx.log(f"dashboards layer {layer}: already built for this SAE and config, skipped")
            summary = ctx.store.read_json(f"{relpath}/summary.json")
        else:
            text = text or dashboard_windows(config, tokenizer)
            summary = build_layer(ctx, layer, model, tokenizer, text, fingerprint)
        versions[str(layer)] = summary["data_version"]
        # Which SAE the dashboards describe (in a sweep, the variant sae_selection chose).
        partitions[str(layer)] = {**summary["metadata"],
                                  "sae_path": ctx.store.url(sae_in_use_relpath(config, ctx.store, layer))}
    return TaskResult(
        metadata={
            "layers": {"raw_value": layers, "type": "json"},
            "inconsistent_contexts": {"raw_value": {k: p["inconsistent_contexts"] for k, p in partitions.items()},
                                      "type": "json"},
            "dead_fraction": {"raw_value": {k: p["dead_fraction"] for k, p in partitions.items()}, "type": "json"},
        },
        data_version=combined_version(versions),
        partitions={key: {**metadata, "features": md(metadata["features"])} for key, metadata in partitions.items()},
    )


def build_layer(ctx: TaskContext, layer: int, model, tokenizer, text: DashboardText,  # noqa: ANN001
                fingerprint: str) -> dict[str, Any]:
    """One layer's dashboards, written as one folder; returns its summary (metadata, data version)."""
    import polars as pl

    from interp_assets.core.dashboard_export import neuronpedia_batch
    from interp_assets.core.dashboards import (
        collect_top_contexts, context_rows, decoder_logit_effects, density_histogram, latent_rows,
    )
    from interp_assets.core.hooks import transformer_lens_name
    from interp_assets.core.plots import density_histogram_figure, png_markdown

    config, section = ctx.config, ctx.config.dashboards
    hook_point = config.activations.hook_point
    (sae,) = load_saes(ctx, [layer]).values()
    settings = _settings(config)
    state = collect_top_contexts(model, sae, layer, hook_point, text.batches, settings, log=ctx.log)
    chosen = None
    if section.logit_latents is not None and section.logit_latents < sae.spec.d_sae:
        import torch

        order = torch.sort(state.fire_count.cpu(), descending=True, stable=True).indices  # ties: lower index
        chosen = order[: section.logit_latents]
    logits = decoder_logit_effects(model, sae, layer, hook_point, settings, latents=chosen)
    decode = functools.lru_cache(maxsize=None)(lambda token: tokenizer.decode([token]))
    latents = latent_rows(state, logits, decode)
    contexts = context_rows(state, decode)
    histogram = density_histogram([row["n_firing"] for row in latents], state.n_tokens)
    document = neuronpedia_batch(
        latents, contexts, model_id=config.model.name.split("/")[-1].lower(), layer=layer,
        sae_set=f"{hook_point.replace('_', '-')}-{config.experiment.name}", n_prompts_total=text.n_windows,
        n_tokens_in_prompt=text.seq_len, dataset=text.description,
    )
    inconsistent = inconsistent_contexts(latents, contexts, section.top_k)
    dead = sum(row["n_firing"] == 0 for row in latents)
    n_contexts = len(contexts["latent"])
    metadata = {
        "path": ctx.store.url(dashboards_relpath(config, layer)),
        "hook_name": transformer_lens_name(hook_point, layer),
        "n_tokens": state.n_tokens,
        "n_windows": state.n_windows,
        "d_sae": len(latents),
        "dead_fraction": dead / len(latents),
        "inconsistent_contexts": inconsistent,
        "text": text.description,
        "density_histogram": {"raw_value": histogram, "type": "json"},
        "density_plot": md(png_markdown(density_histogram_figure(histogram, f"layer {layer}: feature density"),
                                        f"layer {layer} feature density")),
        "features": features_markdown(latents, contexts, most_used(latents, section.features_in_ui)),
    }
    latents_schema, contexts_schema = _schemas()
    latents_table = pl.DataFrame(latents, schema=latents_schema)
    contexts_table = table_from_columns(contexts, contexts_schema)
    relpath = dashboards_relpath(config, layer)
    with tempfile.TemporaryDirectory(prefix="dashboards-") as tmp:
        latents_table.write_parquet(Path(tmp) / "latents.parquet")
        contexts_table.write_parquet(Path(tmp) / "contexts.parquet")
        (Path(tmp) / "features.json").write_text(json.dumps(document, allow_nan=False, ensure_ascii=False,
                                                            separators=(",", ":")), encoding="utf-8")
        files = {name: sha256_file(Path(tmp) / name) for name in DASHBOARD_FILES}
        summary = {"fingerprint": fingerprint, "layer": layer, "files": files, "data_version": combined_version(files),
                   "settings": section.model_dump(mode="json"), "metadata": metadata}
        (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False))
        ctx.store.put_dir(relpath, tmp)
    ctx.log(f"dashboards layer {layer}: {len(latents)} latents, {dead} dead, {n_contexts} contexts, "
            f"{inconsistent} inconsistent")
    return summary


def table_from_columns(columns: dict[str, list[Any]], schema: dict[str, Any]):  # noqa: ANN201 - pl.DataFrame
    """A polars table of ``schema``'s columns, converted through Arrow: polars builds a list column
    from Python lists one Series per row (9 s for 490k contexts), pyarrow in one pass (0.5 s)."""
    import polars as pl
    import pyarrow as pa

    arrow = pa.table({name: pa.array(columns[name], type=pl.Series(dtype=dtype).to_arrow().type)
                      for name, dtype in schema.items()})
    return pl.from_arrow(arrow).cast(schema)


def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """(latents, contexts) Parquet schemas, written out so an empty table has the same columns."""
    import polars as pl

    latents = {
        "latent": pl.Int64, "n_firing": pl.Int64, "density": pl.Float64, "mean_activation": pl.Float64,
        "max_activation": pl.Float64, "n_contexts": pl.Int64, "top_activating_tokens": pl.List(pl.String),
        "promoted_tokens": pl.List(pl.String), "promoted_logits": pl.List(pl.Float64),
        "suppressed_tokens": pl.List(pl.String), "suppressed_logits": pl.List(pl.Float64),
        "activation_histogram": pl.List(pl.Int64), "logit_histogram_heights": pl.List(pl.Int64),
        "logit_histogram_values": pl.List(pl.Float64), "label": pl.String,
    }
    contexts = {
        "latent": pl.Int64, "rank": pl.Int64, "activation": pl.Float64, "window": pl.Int64, "position": pl.Int64,
        "max_token_index": pl.Int64, "token_ids": pl.List(pl.Int64), "tokens": pl.List(pl.String),
        "activations": pl.List(pl.Float64),
    }
    return latents, contexts


def inconsistent_contexts(latents: list[dict[str, Any]], contexts: dict[str, list[Any]], top_k: int) -> int:
    """Stored top contexts that contradict each other or their latent's statistics: a context
    whose marked token does not carry its recorded activation, ranks out of order, a non-firing
    context, a max activation other than the first context's, or a latent with fewer contexts than
    min(top_k, tokens it fired on). The asset check wants 0."""
    from interp_assets.core.dashboards import contexts_by_latent

    bad = 0
    for acts, marked, value in zip(contexts["activations"], contexts["max_token_index"], contexts["activation"],
                                   strict=True):
        bad += acts[marked] != value or value <= 0
    by_latent = contexts_by_latent(contexts)
    for row in latents:
        kept = by_latent.get(row["latent"], [])
        values = [contexts["activation"][i] for i in kept]
        bad += len(kept) != min(top_k, row["n_firing"]) or len(kept) != row["n_contexts"]
        bad += any(a < b for a, b in zip(values, values[1:]))
        bad += bool(kept) and values[0] != row["max_activation"]
    return int(bad)


def most_used(latents: list[dict[str, Any]], n: int) -> list[int]:
    """The layer's features shown on the dashboards asset: those that fire on the most tokens (ties:
    the higher max activation). The attribution graphs' asset shows the features each graph
    relies on most (``tasks.attribution_graphs.used_features_markdown``)."""
    alive = [row for row in latents if row["n_firing"]]
    return [row["latent"] for row in sorted(alive, key=lambda r: (-r["n_firing"], -r["max_activation"]))[:n]]


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "⏎").replace("*", "\\*").replace("`", "'")


def features_markdown(latents: Sequence[dict[str, Any]] | dict[int, dict[str, Any]], contexts: dict[str, list[Any]], chosen: list[int],
                      contexts_per_feature: int = 2) -> str:
    """A Markdown table of the chosen features: label, density, max, their top contexts (the
    max-activating token in bold brackets) and the tokens they promote."""
    from interp_assets.core.dashboards import contexts_by_latent

    by_latent = contexts_by_latent(contexts)
    lines = ["| latent | label | density | max act | top contexts | promotes |", "|---|---|---|---|---|---|"]
    for latent in chosen:
        row = latents[latent]
        shown = []
        for i in by_latent.get(latent, [])[:contexts_per_feature]:
            tokens = [_cell(token) for token in contexts["tokens"][i]]
            marked = contexts["max_token_index"][i]
            tokens[marked] = f"**[{tokens[marked]}]**"
            shown.append(f"{''.join(tokens)} ({contexts['activation'][i]:.3g})")
        promoted = ", ".join(f"'{_cell(token)}'" for token in row["promoted_tokens"][:5])
        lines.append(f"| {latent} | {_cell(row['label'])} | {row['density']:.2e} | {row['max_activation']:.3g} | "
                     f"{'<br>'.join(shown)} | {promoted} |")
    return "\n".join(lines)
