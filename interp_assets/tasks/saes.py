"""Phase 3: one SAE per partition of the run (a layer, or in a sweep a layer × variant), trained
from the stored activations one after another (``sae.data_source: cached``) or side by side from
the model's own forward passes (``stream``, in ``saes_stream``); each resumes from its checkpoint
and is skipped when already published for the same config and data."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from interp_assets.artifacts import activations_relpath, sae_checkpoint_relpath, saes_relpath
from interp_assets.checkpoint_signal import checkpoint_requested
from interp_assets.config import sae_key, split_sae_key
from interp_assets.tasks.common import TaskContext, TaskResult, combined_version, load_model, md
from interp_assets.tasks.sae_publish import HeldOut, eval_vectors, held_out_text, published_summary, publish_sae, saelens_metadata
from interp_assets.tasks.saes_stream import train_sae_group_streamed


def task_saes(ctx: TaskContext) -> TaskResult:
    """One SAE per partition of the run: cached, one after another; streamed, a group of layers at
    a time. A sweep's partitions train variant by variant, each with its variant's settings."""
    model, tokenizer = load_model(ctx)
    held_out = held_out_text(ctx, tokenizer)  # judging settings are the study's, not a variant's
    summaries, partitions = {}, {}
    by_variant: dict[str | None, list[int]] = {}
    for key in ctx.partition_keys:
        layer, variant = split_sae_key(key)
        by_variant.setdefault(variant, []).append(layer)
    for variant, layers in by_variant.items():
        variant_ctx = replace(ctx, config=ctx.config.for_variant(variant))
        for layer, summary in train_layers(variant_ctx, sorted(layers), model, tokenizer, held_out).items():
            key = sae_key(layer, variant)
            summaries[key] = summary
            partitions[key] = partition_metadata(variant_ctx, layer, summary)
    layers = sorted({split_sae_key(key)[0] for key in ctx.partition_keys})
    return TaskResult(
        metadata={
            "layers": {"raw_value": layers, "type": "json"},
            "explained_variance": {"raw_value": {k: s["explained_variance"] for k, s in summaries.items()}, "type": "json"},
            "dead_fraction": {"raw_value": {k: s["dead_fraction"] for k, s in summaries.items()}, "type": "json"},
            "l0": {"raw_value": {k: s["l0"] for k, s in summaries.items()}, "type": "json"},
            "ce_loss_recovered": {"raw_value": {k: s["ce_loss_recovered"] for k, s in summaries.items()}, "type": "json"},
            "ce_denominator_zero_ablation": {"raw_value": {k: s["ce_denominator_zero_ablation"]
                                                          for k, s in summaries.items()}, "type": "json"},
            "explained_variance_random_sae": {"raw_value": {k: s["random_sae/explained_variance"]
                                                           for k, s in summaries.items()}, "type": "json"},
        },
        data_version=combined_version({k: s["weights_sha256"] for k, s in summaries.items()}),
        partitions=partitions,
    )


def train_layers(ctx: TaskContext, layers: list[int], model, tokenizer, held_out: HeldOut) -> dict[int, dict[str, Any]]:  # noqa: ANN001
    """Each layer's published summary, under ``ctx.config``'s SAE settings."""
    if ctx.config.sae.data_source != "stream":
        return {layer: train_one_sae(ctx, layer, model, held_out) for layer in layers}
    trained = {}
    for group in ctx.config.sae.layer_groups(layers):
        trained.update(train_sae_group_streamed(ctx, group, model, tokenizer, held_out))
    return {layer: trained[layer] for layer in layers}


def partition_metadata(ctx: TaskContext, layer: int, summary: dict[str, Any]) -> dict[str, Any]:
    """What one SAE's partition shows: its figures, the held-out table, curve and histogram, its folder."""
    from interp_assets.core.plots import png_markdown

    png = ctx.store.read_bytes(f"{saes_relpath(ctx.config, layer)}/training_curve.png")
    metadata = {
        **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
        "held_out_vs_random_sae": md(held_out_table(summary)),
        "l0_histogram": {"raw_value": summary["l0_histogram"], "type": "json"},
        "path": ctx.store.url(saes_relpath(ctx.config, layer)),
        "training_curve": md(png_markdown(png, f"layer {layer} SAE training curve")),
    }
    if "mlflow_run" in summary:  # the SAE's MLflow run (tracking.mlflow_uri), as a link
        metadata["mlflow_run"] = {"raw_value": summary["mlflow_run"], "type": "url"}
    return metadata


_JUDGED = (("explained_variance", "explained variance (R²)"), ("mse_normalised", "MSE / variance"),
           ("l0", "L0 (mean latents per token)"), ("dead_fraction", "dead latents"),
           ("dense_fraction", "dense latents"), ("ce_loss_with_sae", "CE with the SAE spliced in (nats)"),
           ("kl_with_sae", "KL to the clean model (nats)"), ("ce_loss_recovered", "CE-loss recovered (zero abl.)"),
           ("ce_loss_recovered_mean_ablation", "CE-loss recovered (mean abl.)"))


def held_out_table(summary: dict[str, Any]) -> str:
    """The SAE's held-out figures beside a random SAE's of the same shape, with the CE figures
    they divide by, as the run's Markdown."""
    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4g}"

    rows = [f"| {label} | {cell(summary.get(key))} | {cell(summary.get(f'random_sae/{key}'))} |"
            for key, label in _JUDGED]
    lines = [f"Held out: {summary['n_eval_tokens']} tokens ({summary['n_eval_windows']} windows) of documents "
             "never trained on.", "", "| figure | this SAE | random SAE (chance) |", "|---|---|---|", *rows, "",
             f"CE clean {summary['ce_loss_clean']:.4f}, zero-ablated {summary['ce_loss_zero_ablation']:.4f} "
             f"(denominator {summary['ce_denominator_zero_ablation']:.4f}), mean-ablated "
             f"{summary['ce_loss_mean_ablation']:.4f} (denominator {summary['ce_denominator_mean_ablation']:.4f}) nats."]
    if "ce_warning" in summary:
        lines += ["", f"**Warning:** {summary['ce_warning']}"]
    return "\n".join(lines)


def train_one_sae(ctx: TaskContext, layer: int, model, held_out: HeldOut) -> dict[str, Any]:  # noqa: ANN001
    """Train (or resume, or skip when already done for this config and data) one layer's SAE."""
    from interp_assets.core.sae_data import ShardedActivations, ShuffledBatches
    from interp_assets.core.sae_training import train_sae

    config, store = ctx.config, ctx.store
    act_relpath = activations_relpath(config, layer)
    checkpoint = sae_checkpoint_relpath(config, layer)
    if not store.exists(f"{act_relpath}/manifest.json"):
        raise RuntimeError(f"layer {layer}: no activations at {store.url(act_relpath)}: materialize activations first")
    manifest_bytes = store.read_bytes(f"{act_relpath}/manifest.json")
    manifest = json.loads(manifest_bytes)
    trainer_config = config.sae.trainer_config()
    data_fingerprint = hashlib.sha256(manifest_bytes + held_out.fingerprint.encode()).hexdigest()
    fingerprint = trainer_config.fingerprint(data_fingerprint)

    published = published_summary(ctx, layer, fingerprint)  # a retry of a range run skips finished layers
    if published is not None:
        return published

    shards = [store.local_file(f"{act_relpath}/{s['file']}") for s in manifest["sources"]["corpus"]["shards"]]
    data = ShardedActivations(shards)  # every stored corpus vector is a training vector
    batches = ShuffledBatches(data, trainer_config.batch_size, seed=trainer_config.seed,
                              chunk_vectors=config.sae.shuffle_buffer_vectors)
    metadata = saelens_metadata(ctx, layer, dataset_path=store.url(act_relpath))
    ctx.log(f"layer {layer}: training a {trainer_config.architecture} SAE {data.d_in}→"
            f"{data.d_in * trainer_config.expansion_factor} on {data.n_vectors} vectors, {trainer_config.steps} steps")

    def load_checkpoint() -> bytes | None:
        return store.read_bytes(checkpoint) if store.exists(checkpoint) else None

    result = train_sae(
        batches,
        trainer_config,
        data_fingerprint=data_fingerprint,
        metadata=metadata,
        device=model.device if model is not None else "cpu",
        load_checkpoint=load_checkpoint,
        save_checkpoint=lambda blob: store.write_bytes(checkpoint, blob),
        log=lambda message: ctx.log(f"layer {layer}: {message}"),
        eval_vectors=eval_vectors(ctx, model, held_out, layer),
        checkpoint_requested=checkpoint_requested,
    )
    return publish_sae(ctx, layer, result, fingerprint, model, held_out)


