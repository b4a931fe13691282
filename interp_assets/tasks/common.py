"""What every phase's task shares: its context and result, the model it loads, the corpus, the
SAEs and prompt pairs the circuit phases read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp_assets.artifacts import sae_selection_relpath, saes_relpath, tiny_model_relpath
from interp_assets.config import ExperimentConfig
from resources.storage import ArtifactStore


@dataclass
class TaskResult:
    metadata: dict[str, Any]
    """Pipes metadata: raw values, or {"raw_value": ..., "type": "md" | "json" | ...}."""
    data_version: str | None = None
    partitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-partition metadata of a range run, recorded by the asset for each partition key."""


@dataclass
class TaskContext:
    config: ExperimentConfig
    store: ArtifactStore
    partition_keys: list[str]
    log: Callable[[str], None]


def combined_version(versions: dict[str, str]) -> str:
    """One data version for several outputs (file name or layer -> sha256)."""
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()


def md(text: str) -> dict[str, Any]:
    """Markdown metadata (a picture, a table) in the Pipes form the asset side decodes."""
    return {"raw_value": text, "type": "md"}


_TABLE_TYPES = {str: "string", int: "int", float: "float", bool: "bool"}


def table_metadata(frame: Any, columns: dict[str, type]) -> dict[str, Any]:
    """A polars frame's ``columns`` as Dagster table metadata in Pipes form: typed columns the UI
    can sort, one record per row (None where a value is missing)."""
    records = [{name: row[name] for name in columns} for row in frame.select(list(columns)).iter_rows(named=True)]
    schema = [{"name": name, "type": _TABLE_TYPES[kind]} for name, kind in columns.items()]
    return {"raw_value": {"records": records, "schema": schema}, "type": "table"}


def model_dir(ctx: TaskContext) -> Path:
    if ctx.config.model.source == "pretrained":
        return Path(ctx.config.model.path or "")
    relpath = tiny_model_relpath(ctx.config)
    try:
        return ctx.store.local_dir(relpath)
    except FileNotFoundError:
        raise RuntimeError(
            f"the tiny model {ctx.store.url(relpath)} is not built: materialize language_model first"
        ) from None


def load_model(ctx: TaskContext):  # noqa: ANN201
    from interp_assets.core.modeling import load_model_and_tokenizer

    return load_model_and_tokenizer(model_dir(ctx), ctx.config.model.dtype, ctx.config.model.device)


def corpus_windows(config: ExperimentConfig, tokenizer, held_out: bool):  # noqa: ANN001, ANN201
    """The packed token windows of the SAE corpus (core/corpus.py): the training budget, or the
    held-out budget. ``[n, corpus.seq_len]`` int32."""
    from interp_assets.config import corpus_spec
    from interp_assets.core.corpus import read_windows

    return read_windows(corpus_spec(config), tokenizer, held_out=held_out)


def corpus_record(config: ExperimentConfig) -> dict[str, Any]:
    """What the SAE data is made of, recorded in manifests and fingerprints: the corpus settings
    and the bytes of its files (and of a pretrained model's tokenizer)."""
    from interp_assets.config import corpus_identity

    return {**config.corpus.model_dump(mode="json"), "content_sha256": corpus_identity(config)}


def sae_in_use_relpath(config: ExperimentConfig, store: ArtifactStore, layer: int) -> str:
    """The SAE folder the phases after training read for a layer: the layer's SAE, or in a sweep
    the variant ``sae_selection`` chose for it."""
    if not config.sae_variants:
        return saes_relpath(config, layer)
    record = sae_selection_relpath(config, layer)
    if not store.exists(record):
        raise RuntimeError(f"layer {layer}: no SAE chosen at {store.url(record)}: materialize sae_selection first")
    return saes_relpath(config.for_variant(store.read_json(record)["variant"]), layer)


def load_saes(ctx: TaskContext, layers: list[int]) -> dict:
    from interp_assets.core.sae import load_sae

    saes = {}
    for layer in layers:
        relpath = sae_in_use_relpath(ctx.config, ctx.store, layer)
        if not ctx.store.is_complete_dir(relpath):
            raise RuntimeError(f"layer {layer}: no trained SAE at {ctx.store.url(relpath)}: materialize saes first")
        saes[layer] = load_sae(ctx.store.local_dir(relpath))
    return saes


def key_layers(config: ExperimentConfig) -> list[int]:
    return sorted(config.attribution.key_layers or config.activations.layers)


def prompt_pairs(tokenizer, table):  # noqa: ANN001, ANN202
    from interp_assets.core.prompt_pairs import tokenize_pairs

    return tokenize_pairs(tokenizer, table["clean"].to_list(), table["corrupted"].to_list(),
                          table["target"].to_list(), table["foil"].to_list())
