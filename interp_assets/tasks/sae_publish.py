"""A trained SAE made public: evaluated in the model (CE loss recovered), written as a SAELens
folder with our training record and curve, its checkpoint dropped only then."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from interp_assets.artifacts import sae_checkpoint_relpath, saes_relpath
from interp_assets.tasks.common import TaskContext, corpus_texts
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
        "context_size": section.corpus_seq_len,
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


def publish_sae(ctx: TaskContext, layer: int, result, fingerprint: str, model, tokenizer) -> dict[str, Any]:  # noqa: ANN001
    """Evaluate a trained SAE (CE loss recovered), write its folder, drop its checkpoint."""
    from interp_assets.core.plots import training_curves
    from interp_assets.core.sae import save_sae
    from interp_assets.core.sae_eval import ce_loss_recovered

    config, store = ctx.config, ctx.store
    out_relpath, checkpoint = saes_relpath(config, layer), sae_checkpoint_relpath(config, layer)
    trainer_config = config.sae.trainer_config()
    sae = result.sae.cpu()
    final = result.history[-1]
    ce = ce_loss_recovered(model, tokenizer, corpus_texts(config)[: config.sae.ce_eval_texts], layer,
                           config.activations.hook_point, sae.to(model.device), max_tokens=config.activations.corpus_seq_len)
    sae = sae.cpu()
    summary = {
        "explained_variance": final["eval/explained_variance"],
        "explained_variance_train_batch": final["metrics/explained_variance"],
        "l0": final["metrics/l0"],
        "dead_fraction": final["sparsity/dead_fraction"],
        "mse": final["losses/mse"],
        **ce,
        "d_in": sae.spec.d_in,
        "d_sae": sae.spec.d_sae,
        "architecture": sae.spec.architecture,
        "data_source": config.sae.data_source,
        "steps": trainer_config.steps,
        "resumed_from_step": result.resumed_from_step,
        "train_seconds": round(result.seconds, 3),
        "steps_per_s": (trainer_config.steps - result.resumed_from_step) / max(result.seconds, 1e-9),
    }
    png = training_curves(result.history, f"layer {layer}: SAE training")
    with tempfile.TemporaryDirectory(prefix="sae-") as tmp:
        save_sae(sae, tmp)
        summary["weights_sha256"] = sha256_file(Path(tmp) / "sae_weights.safetensors")
        (Path(tmp) / "training_curve.png").write_bytes(png)
        # Our own record next to the SAELens files: what was trained, how, and how it went.
        record = {"fingerprint": fingerprint, "config": config.sae.model_dump(mode="json"),
                  "summary": summary, "history": result.history}
        (Path(tmp) / "training.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        store.put_dir(out_relpath, tmp)
    store.delete(checkpoint)  # only once the finished SAE is published
    return summary
