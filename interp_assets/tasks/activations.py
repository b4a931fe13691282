"""Phase 2: every layer of a run captured in one forward pass per batch, written as shards with a
manifest per layer; a killed capture resumes from its last shard."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from interp_assets.artifacts import activations_relpath, capture_checkpoint_relpath, prompts_relpath
from interp_assets.tasks.common import TaskContext, TaskResult, combined_version, corpus_record, corpus_windows, load_model


def task_activations(ctx: TaskContext) -> TaskResult:
    """Phase 2: capture every layer of the run's partition range in one forward pass per batch."""
    import polars as pl
    import safetensors.torch
    import torch

    from interp_assets.core.capture import CaptureProgress, CaptureSource, capture_activations
    from interp_assets.core.hooks import hook_width, transformer_lens_name
    from interp_assets.core.modeling import DTYPES

    config, section = ctx.config, ctx.config.activations
    layers = sorted(int(key) for key in ctx.partition_keys)
    model, tokenizer = load_model(ctx)
    # Read and packed before anything else: a corpus that cannot fill its budget fails here.
    train_windows = corpus_windows(config, tokenizer, held_out=False)
    corpus = corpus_record(config)
    ctx.log(f"corpus: {train_windows.shape[0]} training windows of {config.corpus.seq_len} tokens "
            f"({config.corpus.source}, held-out documents excluded)")
    prompt_tables = [ctx.store.read_parquet(prompts_relpath(b)) for b in config.prompts.behaviours]
    prompts = pl.concat(prompt_tables)
    prompt_texts = prompts["clean"].to_list() + prompts["corrupted"].to_list()
    prompt_rows = [
        {"id": pid, "behaviour": beh, "variant": variant}
        for variant in ("clean", "corrupted")
        for pid, beh in zip(prompts["id"].to_list(), prompts["behaviour"].to_list(), strict=True)
    ]
    sources = [
        CaptureSource("corpus", train_windows, skip_first_positions=config.corpus.exclude_first_positions),
        CaptureSource("prompts", prompt_texts, last_n_tokens=section.last_n_tokens),
    ]
    width = hook_width(model.config, section.hook_point)
    dtype = DTYPES[section.dtype]
    # Shards sized in vectors; a manifest written last makes a layer's shards valid as a set.
    for layer in layers:
        ctx.store.delete(f"{activations_relpath(config, layer)}/manifest.json")
    checkpoint = capture_checkpoint_relpath(config, layers)
    fingerprint = hashlib.sha256(json.dumps({
        "config": config.section_hash("model", "activations"),  # the model section names its weights
        "corpus": corpus,
        "layers": layers,
        "prompts": [hashlib.sha256(ctx.store.read_bytes(prompts_relpath(b))).hexdigest() for b in config.prompts.behaviours],
    }, sort_keys=True).encode()).hexdigest()
    resume_from = None
    if ctx.store.exists(checkpoint):
        saved = ctx.store.read_json(checkpoint)
        progress = CaptureProgress.from_json(saved["progress"])
        shards_present = all(  # one listing per layer, not one request per shard
            {record["file"] for records in by_source.values() for record in records}
            <= set(ctx.store.list(activations_relpath(config, layer)))
            for layer, by_source in progress.shards.items()
        )
        if saved.get("fingerprint") == fingerprint and shards_present:
            resume_from = progress
        else:
            ctx.log("capture: discarding a checkpoint from another config, model or prompt set")

    def save_progress(progress: CaptureProgress) -> None:
        # Written after the shards it lists, so it never names a shard that is not on disk.
        ctx.store.write_json(checkpoint, {"fingerprint": fingerprint, "progress": progress.to_json()})

    def write_shard(layer: int, source: str, index: int, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        name = f"{source}-{index:05d}.safetensors"
        sha = ctx.store.write_bytes(f"{activations_relpath(config, layer)}/{name}", safetensors.torch.save(tensors))
        return {"file": name, "n_vectors": int(tensors["activations"].shape[0]), "sha256": sha}

    shards = capture_activations(
        model,
        tokenizer,
        layers,
        section.hook_point,
        sources,
        batch_size=section.batch_size,
        dtype=dtype,
        shard_max_vectors=section.shard_max_vectors,
        write_shard=write_shard,
        log=ctx.log,
        resume_from=resume_from,
        on_progress=save_progress,
    )
    versions, partitions = {}, {}
    for layer in layers:
        manifest = {
            "layer": layer,
            "hook_point": section.hook_point,
            "hook_name": transformer_lens_name(section.hook_point, layer),
            "model": config.model.name,
            "width": width,
            "dtype": section.dtype,
            "sources": {
                name: {"n_vectors": sum(s["n_vectors"] for s in records), "shards": records}
                for name, records in shards[layer].items()
            },
            "prompt_rows": prompt_rows,
            "last_n_tokens": section.last_n_tokens,
            "corpus": corpus,
        }
        relpath = activations_relpath(config, layer)
        versions[str(layer)] = ctx.store.write_json(f"{relpath}/manifest.json", manifest)
        listed = {s["file"] for records in shards[layer].values() for s in records} | {"manifest.json"}
        for stale in set(ctx.store.list(relpath)) - listed:
            ctx.store.delete(f"{relpath}/{stale}")
        partitions[str(layer)] = {
            "path": ctx.store.url(relpath),
            "n_vectors_corpus": manifest["sources"]["corpus"]["n_vectors"],
            "n_vectors_prompts": manifest["sources"]["prompts"]["n_vectors"],
            "n_shards": sum(len(records) for records in shards[layer].values()),
            "width": width,
            "dtype": section.dtype,
            "hook_name": manifest["hook_name"],
            "manifest_sha256": versions[str(layer)],
        }
    ctx.store.delete(checkpoint)  # only once every manifest is published
    return TaskResult(
        metadata={
            "layers": {"raw_value": layers, "type": "json"},
            "hook_point": section.hook_point,
            "width": width,
            "forward_passes_per_batch": 1,
            "layer_manifest_sha256": {"raw_value": versions, "type": "json"},
        },
        data_version=combined_version(versions),
        partitions=partitions,
    )
