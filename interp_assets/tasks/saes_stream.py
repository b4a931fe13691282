"""``sae.data_source: stream``: the SAEs of a group of layers trained side by side from ONE
forward pass of the model per batch (core/sae_stream.py); nothing is read from ``activations``.
The group resumes only as a whole, from checkpoints all at one step."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from interp_assets.artifacts import sae_checkpoint_relpath
from interp_assets.checkpoint_signal import checkpoint_requested
from interp_assets.tasks.common import TaskContext, corpus_record, corpus_windows
from interp_assets.tasks.sae_publish import HeldOut, eval_vectors, published_summary, publish_sae, saelens_metadata


def _stream_data_fingerprint(ctx: TaskContext, held_out: HeldOut) -> str:
    """What a streamed SAE's data depends on: the model, how activations are taken (hook point,
    dtype, forward batch), the corpus (settings and bytes) and what it is judged on."""
    config = ctx.config
    parts = {
        "data_source": "stream",
        "model": config.model.model_dump(mode="json"),
        "activations": config.activations.model_dump(mode="json", include={"hook_point", "dtype", "batch_size"}),
        "corpus": corpus_record(config),
        "held_out": held_out.fingerprint,
        "stream_version": 2,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def train_sae_group_streamed(ctx: TaskContext, layers: list[int], model, tokenizer,  # noqa: ANN001
                             held_out: HeldOut) -> dict[int, dict[str, Any]]:
    """``sae.data_source: stream``: train the SAEs of ``layers`` side by side from one forward
    pass of the model per batch (core/sae_stream.py); nothing is read from ``activations``."""
    from interp_assets.core.modeling import DTYPES
    from interp_assets.core.sae_stream import ActivationStream, Lockstep, plan_stream, train_in_lockstep
    from interp_assets.core.sae_training import checkpoint_step, train_sae

    config, store = ctx.config, ctx.store
    trainer_config = config.sae.trainer_config()
    data_fingerprint = _stream_data_fingerprint(ctx, held_out)
    fingerprint = trainer_config.fingerprint(data_fingerprint)
    summaries: dict[int, dict[str, Any]] = {}
    pending = []
    for layer in layers:  # a retry skips layers that already finished for this config and data
        published = published_summary(ctx, layer, fingerprint)
        if published is not None:
            summaries[layer] = published
        else:
            pending.append(layer)
    if not pending:
        return summaries

    # The group resumes only as a whole: every layer's checkpoint valid and at the same step (they
    # are written at the same steps, so a mismatch means a layer's checkpoint was lost).
    blobs: dict[int, bytes | None] = {}
    steps = set()
    for layer in pending:
        path = sae_checkpoint_relpath(config, layer)
        blobs[layer] = store.read_bytes(path) if store.exists(path) else None
        steps.add(checkpoint_step(blobs[layer], fingerprint))
    if len(steps) != 1:
        ctx.log(f"WARNING: layers {pending}: their checkpoints are not all at one step ({sorted(map(str, steps))}); "
                "the group restarts from step 0")
        blobs = {layer: None for layer in pending}

    section = config.activations
    stream_plan = plan_stream(corpus_windows(config, tokenizer, held_out=False), config.sae.shuffle_buffer_vectors,
                              skip_first=config.corpus.exclude_first_positions)
    stream = ActivationStream(model, tokenizer, pending, section.hook_point, stream_plan,
                              forward_batch_size=section.batch_size, dtype=DTYPES[section.dtype],
                              seed=trainer_config.seed)
    lockstep = Lockstep(stream, trainer_config.batch_size, checkpoint_requested=checkpoint_requested)
    held_out_vectors = {layer: eval_vectors(ctx, model, held_out, layer) for layer in pending}
    ctx.log(f"layers {pending}: training {trainer_config.architecture} SAEs {stream.d_in}→"
            f"{stream.d_in * trainer_config.expansion_factor} from the model's stream ({len(stream_plan.train_windows)} "
            f"windows, {stream_plan.n_train_vectors} vectors per epoch, {stream.n_chunks} chunks of "
            f"{stream_plan.chunk_texts} windows), {trainer_config.steps} steps, one forward pass per batch for all")
    log_lock = threading.Lock()

    def train_one(layer: int, batches, checkpoint_requested):  # noqa: ANN001, ANN202
        def log(message: str) -> None:
            with log_lock:
                ctx.log(f"layer {layer}: {message}")

        path = sae_checkpoint_relpath(config, layer)
        metadata = saelens_metadata(ctx, layer, dataset_path=f"stream:{config.corpus.path or 'generated corpus'}")
        return train_sae(
            batches, trainer_config, data_fingerprint=data_fingerprint, metadata=metadata,
            device=model.device, load_checkpoint=lambda: blobs[layer],
            save_checkpoint=lambda blob: store.write_bytes(path, blob), log=log,
            eval_vectors=held_out_vectors[layer], checkpoint_requested=checkpoint_requested,
        )

    results = train_in_lockstep(lockstep, train_one)
    ctx.log(f"layers {pending}: {stream.forward_passes} forward passes, {stream.tokens_forwarded} tokens for "
            f"{len(pending)} layers")
    for layer in pending:
        summaries[layer] = publish_sae(ctx, layer, results[layer], fingerprint, model, held_out)
        summaries[layer]["stream_forward_passes"] = stream.forward_passes
    return summaries
