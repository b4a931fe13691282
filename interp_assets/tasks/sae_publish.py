"""A trained SAE made public: judged on held-out text beside a random SAE of its shape
(core/sae_eval.py), written as a SAELens folder with our training record and curve, its
checkpoint dropped only then."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp_assets.artifacts import sae_checkpoint_relpath, saes_relpath
from interp_assets.tasks.common import TaskContext, corpus_record, corpus_windows
from interp_assets.tracking import log_sae_run
from resources.storage import sha256_file


def saelens_metadata(ctx: TaskContext, layer: int, dataset_path: str) -> dict[str, Any]:
    """The ``metadata`` of the SAE's cfg.json (SAELens reads model, hook and context size there)."""
    from interp_assets.core.hooks import transformer_lens_name

    section = ctx.config.activations
    return {
        "model_name": ctx.config.model.name,
        "hook_name": transformer_lens_name(section.hook_point, layer),
        "hook_point": section.hook_point,
        "layer": layer,
        "context_size": ctx.config.corpus.seq_len,
        "dataset_path": dataset_path,
    }


def published_summary(ctx: TaskContext, layer: int, fingerprint: str) -> dict[str, Any] | None:
    """The summary of this layer's SAE when it is already published for this config and data."""
    relpath = saes_relpath(ctx.config, layer)
    if not ctx.store.is_complete_dir(relpath):
        return None
    record = ctx.store.read_json(f"{relpath}/training.json")
    if record.get("fingerprint") != fingerprint:
        return None
    ctx.log(f"layer {layer}: SAE already trained for this config and data, skipped")
    return record["summary"]


@dataclass(frozen=True)
class HeldOut:
    """The held-out windows every SAE of a run is judged on, and what they are made of."""

    windows: Any  # torch.Tensor [n, seq_len] int32
    fingerprint: str


def held_out_text(ctx: TaskContext, tokenizer) -> HeldOut:  # noqa: ANN001
    """Read (before any training: a corpus that cannot fill corpus.eval_tokens fails here) the
    held-out windows, and fingerprint what judging depends on."""
    config = ctx.config
    windows = corpus_windows(config, tokenizer, held_out=True)
    judged_by = {"corpus": corpus_record(config),
                 "sae": config.sae.model_dump(mode="json", include={"eval_vectors", "dense_threshold", "min_ce_denominator"})}
    ctx.log(f"corpus: {windows.shape[0]} held-out windows of {config.corpus.seq_len} tokens for evaluation")
    return HeldOut(windows, hashlib.sha256(json.dumps(judged_by, sort_keys=True).encode()).hexdigest())


def eval_vectors(ctx: TaskContext, model, held_out: HeldOut, layer: int):  # noqa: ANN001, ANN201
    """The first ``sae.eval_vectors`` held-out activations of a layer (the training curve's
    explained variance at the end of training)."""
    from interp_assets.core.modeling import DTYPES
    from interp_assets.core.sae_eval import held_out_activations

    config = ctx.config
    return held_out_activations(model, held_out.windows, layer, config.activations.hook_point,
                                batch_size=config.activations.batch_size,
                                skip_first=config.corpus.exclude_first_positions,
                                dtype=DTYPES[config.activations.dtype], limit=config.sae.eval_vectors)


def judge_sae(ctx: TaskContext, layer: int, sae, model, held_out: HeldOut) -> dict[str, Any]:  # noqa: ANN001
    """Held-out figures of the SAE and of a random SAE of its shape, flat for the summary."""
    from interp_assets.core.modeling import DTYPES
    from interp_assets.core.sae_eval import evaluate_held_out, random_sae_like

    config = ctx.config
    data_mean = eval_vectors(ctx, model, held_out, layer).float().mean(dim=0)
    baseline = random_sae_like(sae, data_mean, seed=config.sae.seed)
    figures = evaluate_held_out(
        model, held_out.windows, layer, config.activations.hook_point, {"sae": sae, "random_sae": baseline},
        batch_size=config.activations.batch_size, skip_first=config.corpus.exclude_first_positions,
        activation_dtype=DTYPES[config.activations.dtype], dense_threshold=config.sae.dense_threshold,
        log=lambda message: ctx.log(f"layer {layer}: {message}"),
    )
    summary = {**figures["shared"], **figures["sae"],
               **{f"random_sae/{name}": value for name, value in figures["random_sae"].items()}}
    denominator = figures["shared"]["ce_denominator_zero_ablation"]
    if denominator < config.sae.min_ce_denominator:
        summary["ce_warning"] = (
            f"zero-ablating layer {layer} raises the held-out CE by only {denominator:.4f} nats "
            f"(< sae.min_ce_denominator {config.sae.min_ce_denominator}): CE-loss recovered divides by "
            "that and is noise here; judge this SAE by explained variance and KL instead"
        )
    return summary


def tracking_tags(ctx: TaskContext, layer: int) -> dict[str, str]:
    from interp_assets.config import sae_key
    from interp_assets.provenance import git_commit
    from resources.compute import RUN_ID_ENV

    return {"dagster.run_id": os.environ.get(RUN_ID_ENV, ""),
            "dagster.partition": sae_key(layer, ctx.config.sae_variant), "git_commit": git_commit()}


def publish_sae(ctx: TaskContext, layer: int, result, fingerprint: str, model, held_out: HeldOut) -> dict[str, Any]:  # noqa: ANN001
    """Judge a trained SAE on held-out text, write its folder, drop its checkpoint."""
    from interp_assets.core.plots import training_curves
    from interp_assets.core.sae import save_sae

    config, store = ctx.config, ctx.store
    out_relpath, checkpoint = saes_relpath(config, layer), sae_checkpoint_relpath(config, layer)
    trainer_config = config.sae.trainer_config()
    final = result.history[-1]
    summary = judge_sae(ctx, layer, result.sae.to(model.device), model, held_out)
    sae = result.sae.cpu()
    summary.update({
        # The last training batch's figures (rescaled units, one batch): the curve's, not a verdict.
        "train_batch/explained_variance": final["metrics/explained_variance"],
        "train_batch/l0": final["metrics/l0"],
        "train_batch/mse_rescaled": final["losses/mse"],
        "train_window/dead_fraction": final["sparsity/dead_fraction"],
        "d_in": sae.spec.d_in,
        "d_sae": sae.spec.d_sae,
        "architecture": sae.spec.architecture,
        "data_source": config.sae.data_source,
        **({"sae_variant": config.sae_variant} if config.sae_variant else {}),
        "steps": trainer_config.steps,
        "resumed_from_step": result.resumed_from_step,
        "train_seconds": round(result.seconds, 3),
        "steps_per_s": (trainer_config.steps - result.resumed_from_step) / max(result.seconds, 1e-9),
    })
    # Logged before the folder is written, so the record keeps the link; a failure only warns.
    url = log_sae_run(config, layer, result.history, summary, tags=tracking_tags(ctx, layer), warn=ctx.log)
    if url is not None:
        summary["mlflow_run"] = url
    png = training_curves(result.history, f"layer {layer}: SAE training")
    with tempfile.TemporaryDirectory(prefix="sae-") as tmp:
        save_sae(sae, tmp)
        summary["weights_sha256"] = sha256_file(Path(tmp) / "sae_weights.safetensors")
        (Path(tmp) / "training_curve.png").write_bytes(png)
        # Our own record next to the SAELens files: what was trained, how, and how it went.
        record = {"fingerprint": fingerprint, "config": config.sae.model_dump(mode="json"),
                  "summary": summary, "history": result.history}
        (Path(tmp) / "training.json").write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False))
        store.put_dir(out_relpath, tmp)
    store.delete(checkpoint)  # only once the finished SAE is published
    return summary
