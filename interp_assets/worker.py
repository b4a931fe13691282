"""Worker entry point: ``python -m interp_assets.worker <task>``.

Run by a compute backend (a local subprocess or a SLURM job) under Dagster Pipes: the task reads
its config and partition keys from the Pipes extras, does the heavy work with ``core``, writes
artifacts to the storage root, and reports logs, metadata and a content-hash data version back to
the Dagster run. Without Pipes (run by hand or by a benchmark) the same task runs from
``--config``/``--partition`` and prints its result as JSON.

Artifact layout under the storage root (paths built only here and in ``assets/``):
  models/tiny-<spec hash>/               the tiny model (config.json, model.safetensors, tokenizer)
  models/<model name>/card.json          a pretrained model's fingerprint
  prompts/<behaviour>.parquet            Phase 0
  baselines/<behaviour>.parquet (+.png)  Phase 1
  activations/<hook>/layer_<L>/          Phase 2: <source>-<i>.safetensors shards + manifest.json
  saes/<hook>/layer_<L>/                 Phase 3: cfg.json + sae_weights.safetensors (SAELens) +
                                         training.json + training_curve.png
  checkpoints/activations/<hook>/capture-<layers>.json  Phase 2: capture progress (deleted when done)
  checkpoints/saes/<hook>/layer_<L>/     Phase 3: the latest training checkpoint (deleted when done)
  attribution/<hook>/<behaviour>/        Phase 4: nodes.parquet, edges.parquet, graph.json (circuit-
                                         tracer / Neuronpedia schema), graph.png, summary.json
  interventions/<hook>/<behaviour>/      Phase 5: experiments.parquet, faithfulness.parquet (+.png)
  checkpoints/interventions/<hook>/<behaviour>/  Phase 5: finished experiments so far (parts)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CHECKPOINT_SIGNALLED = False


def _checkpoint_on_usr1() -> None:
    """SLURM sends USR1 ahead of the time limit (``--signal=B:USR1@N``, the worker ``exec``-ed by
    the batch script): checkpoint at the next step instead of dying (USR1's default action), so
    the resubmitted job resumes from there."""

    def handler(signum: int, frame: object) -> None:
        global _CHECKPOINT_SIGNALLED
        _CHECKPOINT_SIGNALLED = True
        # os.write, not print: a handler that prints while the worker is inside a write to stderr
        # raises "reentrant call" there.
        os.write(2, b"worker: USR1 received: checkpointing at the next training step\n")

    signal.signal(signal.SIGUSR1, handler)


def _checkpoint_requested() -> bool:
    """True once after each USR1."""
    global _CHECKPOINT_SIGNALLED
    requested, _CHECKPOINT_SIGNALLED = _CHECKPOINT_SIGNALLED, False
    return requested


if __name__ == "__main__":
    # Before the imports below: SLURM checks time limits every 30 s and sends USR1 when fewer than
    # signal_seconds + 30 s are left, so a short job can get it within a second of starting. The
    # batch script ignores USR1 until here; dying of it instead fails the job, not resubmittable.
    _checkpoint_on_usr1()

from interp_assets.config import PROJECT_ROOT, ExperimentConfig, parse_config  # noqa: E402
from resources.storage import ArtifactStore, open_store, sha256_file  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Artifact paths


def tiny_model_relpath(config: ExperimentConfig) -> str:
    spec = json.dumps(config.model.tiny_spec.model_dump(mode="json"), sort_keys=True)
    return f"models/tiny-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def model_card_relpath(config: ExperimentConfig) -> str:
    return f"models/{config.model.name.replace('/', '--')}/card.json"


def prompts_relpath(behaviour: str) -> str:
    return f"prompts/{behaviour}.parquet"


def baselines_relpath(behaviour: str) -> str:
    return f"baselines/{behaviour}.parquet"


def activations_relpath(config: ExperimentConfig, layer: int) -> str:
    return f"activations/{config.activations.hook_point}/layer_{layer:03d}"


def capture_checkpoint_relpath(config: ExperimentConfig, layers: list[int]) -> str:
    # One per layer set: a range run and a single-layer run never resume each other's capture.
    key = hashlib.sha256(json.dumps(sorted(layers)).encode()).hexdigest()[:12]
    return f"checkpoints/activations/{config.activations.hook_point}/capture-{key}.json"


def saes_relpath(config: ExperimentConfig, layer: int) -> str:
    return f"saes/{config.activations.hook_point}/layer_{layer:03d}"


def sae_checkpoint_relpath(config: ExperimentConfig, layer: int) -> str:
    # Outside the SAE folder, which is replaced as a whole when training finishes.
    return f"checkpoints/saes/{config.activations.hook_point}/layer_{layer:03d}/checkpoint.pt"


def attribution_relpath(config: ExperimentConfig, behaviour: str) -> str:
    return f"attribution/{config.activations.hook_point}/{behaviour}"


def interventions_relpath(config: ExperimentConfig, behaviour: str) -> str:
    return f"interventions/{config.activations.hook_point}/{behaviour}"


def interventions_checkpoint_relpath(config: ExperimentConfig, behaviour: str) -> str:
    return f"checkpoints/interventions/{config.activations.hook_point}/{behaviour}"


def behaviour_seed(seed: int, behaviour: str) -> int:
    """A per-behaviour seed that does not depend on which other behaviours are configured."""
    return (seed * 1_000_003 + zlib.crc32(behaviour.encode())) % (2**31)


# ---------------------------------------------------------------------------------------------
# Task plumbing


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


def git_commit() -> str:
    if os.environ.get("INTERP_ASSETS_GIT_COMMIT"):
        return os.environ["INTERP_ASSETS_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(config: ExperimentConfig, started: float) -> dict[str, Any]:
    import torch
    import transformers

    device = "cpu"
    if torch.cuda.is_available() and config.model.device != "cpu":
        device = torch.cuda.get_device_name(0)
    return {
        "provenance/git_commit": git_commit(),
        "provenance/packages": {
            "raw_value": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "type": "json",
        },
        "provenance/seed": config.experiment.seed,
        "provenance/model": config.model.name,
        "provenance/model_revision": config.model.revision or "none",
        "provenance/compute_backend": os.environ.get("INTERP_ASSETS_COMPUTE_BACKEND", "direct"),
        "provenance/host": socket.gethostname(),
        "provenance/device": device,
        "provenance/slurm_job_id": os.environ.get("SLURM_JOB_ID", "none"),
        "provenance/wall_seconds": round(time.perf_counter() - started, 3),
    }


def combined_version(versions: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()


def _md(text: str) -> dict[str, Any]:
    return {"raw_value": text, "type": "md"}


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


# ---------------------------------------------------------------------------------------------
# Tasks


def task_language_model(ctx: TaskContext) -> TaskResult:
    """The tiny model: build + train into the storage root. A pretrained model: fingerprint it."""
    config = ctx.config
    if config.model.source == "pretrained":
        return _fingerprint_pretrained(ctx)
    from interp_assets.core.tiny_model import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(**config.model.tiny_spec.model_dump())
    relpath = tiny_model_relpath(config)
    if ctx.store.is_complete_dir(relpath):
        # The folder name is the hash of the spec, and the build is deterministic: a complete
        # folder is exactly what a rebuild would produce, so it is reused (and re-hashed).
        ctx.log(f"tiny model {ctx.store.url(relpath)} already built for this spec: reusing it")
        local = ctx.store.local_dir(relpath)
        summary = ctx.store.read_json(f"{relpath}/build_summary.json")
    else:
        with tempfile.TemporaryDirectory(prefix="tiny-model-") as tmp:
            summary = build_tiny_model(spec, tmp, log=ctx.log)
            (Path(tmp) / "build_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
            ctx.store.put_dir(relpath, tmp)
        local = ctx.store.local_dir(relpath)
    files = {p.name: sha256_file(p) for p in sorted(local.iterdir()) if p.is_file() and p.name not in {"_COMPLETE"}}
    files.pop("build_summary.json", None)  # wall-clock figures: not part of the model's identity
    return TaskResult(
        metadata={
            "path": ctx.store.url(relpath),
            "files": {"raw_value": files, "type": "json"},
            **{f"train/{key}": value for key, value in summary.items()},
            "num_layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
        },
        data_version=combined_version(files),
    )


def _fingerprint_pretrained(ctx: TaskContext) -> TaskResult:
    model_path = Path(ctx.config.model.path or "")
    hf_config = json.loads((model_path / "config.json").read_text())
    # Hashing 6 GB of weights on every check would dominate; names + sizes + the index and config
    # identify a hub snapshot (weights never change in place under the same names and sizes).
    weights = {
        p.name: p.stat().st_size for p in sorted(model_path.iterdir()) if p.suffix in {".safetensors", ".bin"}
    }
    if not weights:
        raise RuntimeError(f"model.path {model_path}: no *.safetensors or *.bin weights")
    card = {
        "name": ctx.config.model.name,
        "revision": ctx.config.model.revision,
        "path": str(model_path),
        "config_sha256": sha256_file(model_path / "config.json"),
        "weights": weights,
    }
    ctx.store.write_json(model_card_relpath(ctx.config), card)
    text_config = hf_config.get("text_config", hf_config)
    return TaskResult(
        metadata={
            "path": str(model_path),
            "num_layers": text_config["num_hidden_layers"],
            "hidden_size": text_config["hidden_size"],
            "intermediate_size": text_config["intermediate_size"],
            "card": {"raw_value": card, "type": "json"},
        },
        data_version=combined_version({"card": json.dumps(card, sort_keys=True)}),
    )


def task_baselines(ctx: TaskContext) -> TaskResult:
    """Phase 1: per-prompt logit difference, p(target), correctness on clean and corrupted."""
    import polars as pl

    from interp_assets.core.metrics import score_prompts
    from interp_assets.core.plots import logit_diff_histogram, png_markdown

    (behaviour,) = ctx.partition_keys
    prompts = ctx.store.read_parquet(prompts_relpath(behaviour))
    model, tokenizer = load_model(ctx)
    batch_size = ctx.config.baselines.batch_size
    columns: dict[str, Any] = {"id": prompts["id"], "behaviour": prompts["behaviour"], "split": prompts["split"]}
    for variant in ("clean", "corrupted"):
        scores = score_prompts(
            model,
            tokenizer,
            prompts[variant].to_list(),
            prompts["target"].to_list(),
            prompts["foil"].to_list(),
            batch_size,
            progress=lambda done, total, v=variant: ctx.log(f"baselines {behaviour}/{v}: {done}/{total} prompts"),
        )
        columns[f"{variant}_logit_diff"] = scores.logit_diff.numpy()
        columns[f"{variant}_p_target"] = scores.p_target.numpy()
        columns[f"{variant}_correct"] = scores.correct.numpy()
    table = pl.DataFrame(columns)
    sha = ctx.store.write_parquet(baselines_relpath(behaviour), table)
    png = logit_diff_histogram(
        table["clean_logit_diff"].to_list(), table["corrupted_logit_diff"].to_list(), f"{behaviour}: logit difference"
    )
    ctx.store.write_bytes(baselines_relpath(behaviour).replace(".parquet", ".png"), png)
    summary = {
        "n_prompts": table.height,
        "accuracy_clean": float(table["clean_correct"].mean()),
        "accuracy_corrupted": float(table["corrupted_correct"].mean()),
        "mean_logit_diff_clean": float(table["clean_logit_diff"].mean()),
        "mean_logit_diff_corrupted": float(table["corrupted_logit_diff"].mean()),
        "mean_p_target_clean": float(table["clean_p_target"].mean()),
        "accuracy_clean_test": float(table.filter(pl.col("split") == "test")["clean_correct"].mean()),
    }
    return TaskResult(
        metadata={
            **summary,
            "path": ctx.store.url(baselines_relpath(behaviour)),
            "logit_diff_histogram": _md(png_markdown(png, f"{behaviour} logit difference")),
        },
        data_version=sha,
    )


def _corpus_texts(config: ExperimentConfig) -> list[str]:
    section = config.activations
    if section.corpus_path:
        path = Path(section.corpus_path)
        if not path.is_absolute() and config.source_path:
            path = Path(config.source_path).parent / path
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return lines[: section.corpus_sequences]
    from interp_assets.core.behaviours import generate_corpus

    # One sentence per document: the tiny model is trained on sentences that never attend to
    # each other, so this is the distribution its activations come from.
    return generate_corpus(section.corpus_sequences, behaviour_seed(config.experiment.seed, "corpus"))


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
    prompt_tables = [ctx.store.read_parquet(prompts_relpath(b)) for b in config.prompts.behaviours]
    prompts = pl.concat(prompt_tables)
    prompt_texts = prompts["clean"].to_list() + prompts["corrupted"].to_list()
    prompt_rows = [
        {"id": pid, "behaviour": beh, "variant": variant}
        for variant in ("clean", "corrupted")
        for pid, beh in zip(prompts["id"].to_list(), prompts["behaviour"].to_list(), strict=True)
    ]
    sources = [
        CaptureSource("corpus", _corpus_texts(config), max_tokens=section.corpus_seq_len),
        CaptureSource("prompts", prompt_texts, last_n_tokens=section.last_n_tokens),
    ]
    model, tokenizer = load_model(ctx)
    width = hook_width(model.config, section.hook_point)
    dtype = DTYPES[section.dtype]
    # Shards sized in vectors; a manifest written last makes a layer's shards valid as a set.
    for layer in layers:
        ctx.store.delete(f"{activations_relpath(config, layer)}/manifest.json")
    checkpoint = capture_checkpoint_relpath(config, layers)
    fingerprint = hashlib.sha256(json.dumps({
        "config": config.section_hash("model", "activations"),  # the model section names its weights
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
            "corpus_seq_len": section.corpus_seq_len,
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


def _trainer_config(config: ExperimentConfig):  # noqa: ANN202
    from interp_assets.core.sae import CONFIG_TO_SAELENS_ARCHITECTURE
    from interp_assets.core.sae_training import TrainerConfig

    section = config.sae
    return TrainerConfig(
        architecture=CONFIG_TO_SAELENS_ARCHITECTURE[section.architecture],
        **section.model_dump(
            include={
                "expansion_factor", "k", "batch_size", "steps", "lr", "lr_warmup_steps", "lr_decay_steps",
                "l1_coefficient", "l1_warmup_steps", "aux_k_coefficient", "dead_window_steps", "grad_clip",
                "checkpoint_every", "log_every", "seed",
            }
        ),
    )


def _train_one_sae(ctx: TaskContext, layer: int, model, tokenizer) -> dict[str, Any]:  # noqa: ANN001
    """Train (or resume, or skip when already done for this config and data) one layer's SAE."""
    from interp_assets.core.hooks import transformer_lens_name
    from interp_assets.core.sae_data import ShardedActivations, ShuffledBatches
    from interp_assets.core.sae_training import train_sae

    config, store = ctx.config, ctx.store
    act_relpath, out_relpath = activations_relpath(config, layer), saes_relpath(config, layer)
    checkpoint = sae_checkpoint_relpath(config, layer)
    if not store.exists(f"{act_relpath}/manifest.json"):
        raise RuntimeError(f"layer {layer}: no activations at {store.url(act_relpath)}: materialize activations first")
    manifest_bytes = store.read_bytes(f"{act_relpath}/manifest.json")
    manifest = json.loads(manifest_bytes)
    trainer_config = _trainer_config(config)
    fingerprint = trainer_config.fingerprint(hashlib.sha256(manifest_bytes).hexdigest())

    # A retry of a range run skips layers that already finished for this config and data.
    if store.is_complete_dir(out_relpath):
        record = store.read_json(f"{out_relpath}/training.json")
        if record.get("fingerprint") == fingerprint:
            ctx.log(f"layer {layer}: SAE already trained for this config and data, skipped")
            return record["summary"]

    shards = [store.local_file(f"{act_relpath}/{s['file']}") for s in manifest["sources"]["corpus"]["shards"]]
    total = manifest["sources"]["corpus"]["n_vectors"]
    data = ShardedActivations(shards, held_out=min(config.sae.eval_vectors, total // 10))
    batches = ShuffledBatches(data, trainer_config.batch_size, seed=trainer_config.seed,
                              chunk_vectors=config.sae.shuffle_buffer_vectors)
    metadata = {
        "model_name": config.model.name,
        "hook_name": transformer_lens_name(config.activations.hook_point, layer),
        "hook_point": config.activations.hook_point,
        "layer": layer,
        "context_size": config.activations.corpus_seq_len,
        "dataset_path": store.url(act_relpath),
    }
    ctx.log(f"layer {layer}: training a {trainer_config.architecture} SAE {data.d_in}→"
            f"{data.d_in * trainer_config.expansion_factor} on {data.n_vectors} vectors, {trainer_config.steps} steps")

    def load_checkpoint() -> bytes | None:
        return store.read_bytes(checkpoint) if store.exists(checkpoint) else None

    result = train_sae(
        batches,
        trainer_config,
        data_fingerprint=hashlib.sha256(manifest_bytes).hexdigest(),
        metadata=metadata,
        device=model.device if model is not None else "cpu",
        load_checkpoint=load_checkpoint,
        save_checkpoint=lambda blob: store.write_bytes(checkpoint, blob),
        log=lambda message: ctx.log(f"layer {layer}: {message}"),
        eval_vectors=data.held_out_vectors(),
        checkpoint_requested=_checkpoint_requested,
    )
    return _publish_sae(ctx, layer, result, fingerprint, model, tokenizer)


def _publish_sae(ctx: TaskContext, layer: int, result, fingerprint: str, model, tokenizer) -> dict[str, Any]:  # noqa: ANN001
    """Evaluate a trained SAE (CE loss recovered), write its folder, drop its checkpoint."""
    from interp_assets.core.plots import training_curves
    from interp_assets.core.sae import save_sae
    from interp_assets.core.sae_eval import ce_loss_recovered

    config, store = ctx.config, ctx.store
    out_relpath, checkpoint = saes_relpath(config, layer), sae_checkpoint_relpath(config, layer)
    trainer_config = _trainer_config(config)
    sae = result.sae.cpu()
    final = result.history[-1]
    ce = ce_loss_recovered(model, tokenizer, _corpus_texts(config)[: config.sae.ce_eval_texts], layer,
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


def _stream_data_fingerprint(ctx: TaskContext, texts: list[str]) -> str:
    """What a streamed SAE's data depends on: the model, how activations are taken (hook point,
    dtype, corpus length and forward batch), and the corpus texts themselves."""
    config = ctx.config
    section = config.activations
    parts = {
        "data_source": "stream",
        "model": config.model.model_dump(mode="json"),
        "activations": section.model_dump(mode="json", include={"hook_point", "dtype", "batch_size", "corpus_seq_len"}),
        "corpus_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "stream_version": 1,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _stream_groups(config: ExperimentConfig, layers: list[int]) -> list[list[int]]:
    size = config.sae.stream_layers_per_task or len(layers) or 1
    return [layers[i : i + size] for i in range(0, len(layers), size)]


def array_task_groups(task: str, partition_keys: list[str], config_payload: dict[str, Any]) -> list[list[str]]:
    """How a compute backend splits a layer range of ``task`` into array tasks: one per layer,
    except ``saes`` streamed from the model (``sae.data_source: stream``), one per group of
    ``sae.stream_layers_per_task`` layers (default: the whole range in one), so that a group
    shares one forward pass per batch. Partition keys stay strings, in the range's order."""
    sae = config_payload.get("sae") or {}
    if task == "saes" and sae.get("data_source") == "stream":
        size = sae.get("stream_layers_per_task") or len(partition_keys) or 1
        return [partition_keys[i : i + size] for i in range(0, len(partition_keys), size)]
    return [[key] for key in partition_keys]


def _train_sae_group_streamed(ctx: TaskContext, layers: list[int], model, tokenizer) -> dict[int, dict[str, Any]]:  # noqa: ANN001
    """``sae.data_source: stream``: train the SAEs of ``layers`` side by side from one forward
    pass of the model per batch (core/sae_stream.py); nothing is read from ``activations``."""
    import torch

    from interp_assets.core.hooks import transformer_lens_name
    from interp_assets.core.modeling import DTYPES
    from interp_assets.core.sae_stream import ActivationStream, Lockstep, plan_stream, train_in_lockstep
    from interp_assets.core.sae_training import train_sae

    config, store = ctx.config, ctx.store
    trainer_config = _trainer_config(config)
    texts = _corpus_texts(config)
    data_fingerprint = _stream_data_fingerprint(ctx, texts)
    fingerprint = trainer_config.fingerprint(data_fingerprint)
    summaries: dict[int, dict[str, Any]] = {}
    pending = []
    for layer in layers:  # a retry skips layers that already finished for this config and data
        out_relpath = saes_relpath(config, layer)
        if store.is_complete_dir(out_relpath) and store.read_json(f"{out_relpath}/training.json").get("fingerprint") == fingerprint:
            ctx.log(f"layer {layer}: SAE already trained for this config and data, skipped")
            summaries[layer] = store.read_json(f"{out_relpath}/training.json")["summary"]
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
        blob = store.read_bytes(path) if store.exists(path) else None
        step = None
        if blob is not None:
            try:
                import io

                state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                step = state["step"] if state.get("fingerprint") == fingerprint else None
            except Exception:  # noqa: BLE001 - an unreadable checkpoint means: start over
                step = None
        blobs[layer] = blob
        steps.add(step)
    if len(steps) != 1:
        ctx.log(f"WARNING: layers {pending}: their checkpoints are not all at one step ({sorted(map(str, steps))}); "
                "the group restarts from step 0")
        blobs = {layer: None for layer in pending}

    section = config.activations
    stream_plan = plan_stream(tokenizer, texts, section.corpus_seq_len, config.sae.eval_vectors,
                              config.sae.shuffle_buffer_vectors)
    stream = ActivationStream(model, tokenizer, pending, section.hook_point, stream_plan,
                              max_tokens=section.corpus_seq_len, forward_batch_size=section.batch_size,
                              dtype=DTYPES[section.dtype], seed=trainer_config.seed)
    lockstep = Lockstep(stream, trainer_config.batch_size, checkpoint_requested=_checkpoint_requested)
    eval_vectors = stream.eval_vectors()
    ctx.log(f"layers {pending}: training {trainer_config.architecture} SAEs {stream.d_in}→"
            f"{stream.d_in * trainer_config.expansion_factor} from the model's stream ({len(stream_plan.train_texts)} "
            f"texts, {stream_plan.n_train_vectors} vectors per epoch, {stream.n_chunks} chunks of "
            f"{stream_plan.chunk_texts} texts), {trainer_config.steps} steps, one forward pass per batch for all")
    import threading

    log_lock = threading.Lock()

    def train_one(layer: int, batches, checkpoint_requested):  # noqa: ANN001, ANN202
        def log(message: str) -> None:
            with log_lock:
                ctx.log(f"layer {layer}: {message}")

        path = sae_checkpoint_relpath(config, layer)
        metadata = {
            "model_name": config.model.name,
            "hook_name": transformer_lens_name(section.hook_point, layer),
            "hook_point": section.hook_point,
            "layer": layer,
            "context_size": section.corpus_seq_len,
            "dataset_path": f"stream:{section.corpus_path or 'generated corpus'}",
        }
        return train_sae(
            batches, trainer_config, data_fingerprint=data_fingerprint, metadata=metadata,
            device=model.device, load_checkpoint=lambda: blobs[layer],
            save_checkpoint=lambda blob: store.write_bytes(path, blob), log=log,
            eval_vectors=eval_vectors[layer], checkpoint_requested=checkpoint_requested,
        )

    results = train_in_lockstep(lockstep, train_one)
    ctx.log(f"layers {pending}: {stream.forward_passes} forward passes, {stream.tokens_forwarded} tokens for "
            f"{len(pending)} layers")
    for layer in pending:
        summaries[layer] = _publish_sae(ctx, layer, results[layer], fingerprint, model, tokenizer)
        summaries[layer]["stream_forward_passes"] = stream.forward_passes
    return summaries


def task_saes(ctx: TaskContext) -> TaskResult:
    """Phase 3: one SAE per layer of the run, one after another in this worker."""
    from interp_assets.core.plots import png_markdown

    model, tokenizer = load_model(ctx)
    layers = sorted(int(key) for key in ctx.partition_keys)
    summaries, partitions = {}, {}
    if ctx.config.sae.data_source == "stream":
        trained = {}
        for group in _stream_groups(ctx.config, layers):
            trained.update(_train_sae_group_streamed(ctx, group, model, tokenizer))
    for layer in layers:
        if ctx.config.sae.data_source == "stream":
            summary = trained[layer]
        else:
            summary = _train_one_sae(ctx, layer, model, tokenizer)
        summaries[str(layer)] = summary
        png = ctx.store.read_bytes(f"{saes_relpath(ctx.config, layer)}/training_curve.png")
        partitions[str(layer)] = {
            **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
            "path": ctx.store.url(saes_relpath(ctx.config, layer)),
            "training_curve": _md(png_markdown(png, f"layer {layer} SAE training curve")),
        }
    return TaskResult(
        metadata={
            "layers": {"raw_value": layers, "type": "json"},
            "explained_variance": {"raw_value": {k: s["explained_variance"] for k, s in summaries.items()}, "type": "json"},
            "dead_fraction": {"raw_value": {k: s["dead_fraction"] for k, s in summaries.items()}, "type": "json"},
            "l0": {"raw_value": {k: s["l0"] for k, s in summaries.items()}, "type": "json"},
            "ce_loss_recovered": {"raw_value": {k: s["ce_loss_recovered"] for k, s in summaries.items()}, "type": "json"},
        },
        data_version=combined_version({k: s["weights_sha256"] for k, s in summaries.items()}),
        partitions=partitions,
    )


# ---------------------------------------------------------------------------------------------
# Phases 4 and 5: circuits


def _load_saes(ctx: TaskContext, layers: list[int]) -> dict:
    from interp_assets.core.sae import load_sae

    saes = {}
    for layer in layers:
        relpath = saes_relpath(ctx.config, layer)
        if not ctx.store.is_complete_dir(relpath):
            raise RuntimeError(f"layer {layer}: no trained SAE at {ctx.store.url(relpath)}: materialize saes first")
        saes[layer] = load_sae(ctx.store.local_dir(relpath))
    return saes


def _key_layers(config: ExperimentConfig) -> list[int]:
    return sorted(config.attribution.key_layers or config.activations.layers)


def _prompt_pairs(tokenizer, table):  # noqa: ANN001, ANN202
    from interp_assets.core.prompt_pairs import tokenize_pairs

    return tokenize_pairs(tokenizer, table["clean"].to_list(), table["corrupted"].to_list(),
                          table["target"].to_list(), table["foil"].to_list())


def task_attribution_graphs(ctx: TaskContext) -> TaskResult:
    """Phase 4: the pruned attribution graph of one behaviour over the key layers' SAE features."""
    import polars as pl

    from interp_assets.core.attribution import (
        AttributionSettings, attribution_graph, exact_patch_effects, graph_json, node_id, rank_agreement,
    )
    from interp_assets.core.hooks import decoder_layers, transformer_lens_name
    from interp_assets.core.plots import attribution_graph_figure, png_markdown

    config, section = ctx.config, ctx.config.attribution
    (behaviour,) = ctx.partition_keys
    layers = _key_layers(config)
    prompts = ctx.store.read_parquet(prompts_relpath(behaviour))
    train = prompts.filter(pl.col("split") == "train")
    model, tokenizer = load_model(ctx)
    saes = _load_saes(ctx, layers)
    pairs = _prompt_pairs(tokenizer, train)
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
    features = sorted((n for n in graph.nodes if not n.is_error), key=lambda n: -abs(n.attribution))[:10]
    exact = exact_patch_effects(model, saes, pairs, features, config.activations.hook_point, pad, settings.batch_size)
    agreement = rank_agreement([n.attribution for n in features], exact)
    ctx.log(f"attribution {behaviour}: top-{len(features)} features, sign agreement with exact patching "
            f"{agreement['sign_agreement']:.2f}, Spearman {agreement['spearman']:.2f}")

    width = graph.max_length
    ids = [node_id(n, width) for n in graph.nodes]
    exact_by_id = {node_id(n, width): e for n, e in zip(features, exact, strict=True)}
    nodes_table = pl.DataFrame({
        "node_id": ids,
        "layer": [n.layer for n in graph.nodes],
        "offset": [n.offset for n in graph.nodes],
        "ctx_idx": [width + n.offset for n in graph.nodes],
        "feature": [n.feature for n in graph.nodes],
        "feature_type": ["error" if n.is_error else "feature" for n in graph.nodes],
        "attribution": [n.attribution for n in graph.nodes],
        "activation_clean": [n.activation_clean for n in graph.nodes],
        "activation_corrupted": [n.activation_corrupted for n in graph.nodes],
        "exact_patch_effect": [exact_by_id.get(i) for i in ids],
    }, schema_overrides={"exact_patch_effect": pl.Float64})
    edges_table = pl.DataFrame({
        "source": [ids[e.source] for e in graph.edges],
        "target": [ids[e.target] for e in graph.edges],
        "weight": [e.weight for e in graph.edges],
        "source_layer": [graph.nodes[e.source].layer for e in graph.edges],
        "target_layer": [graph.nodes[e.target].layer for e in graph.edges],
    }, schema={"source": pl.String, "target": pl.String, "weight": pl.Float64,
               "source_layer": pl.Int64, "target_layer": pl.Int64})
    longest = max(range(len(pairs)), key=lambda i: len(pairs.clean[i])) if len(pairs) else 0
    prompt_tokens = tokenizer.convert_ids_to_tokens(pairs.clean[longest]) if len(pairs) else []
    target, foil = train["target"][pairs.rows[longest]], train["foil"][pairs.rows[longest]]
    hook_names = {layer: transformer_lens_name(config.activations.hook_point, layer) for layer in layers}
    document = graph_json(
        graph, slug=f"{config.experiment.name}-{behaviour}", scan=config.model.name,
        prompt=train["clean"][pairs.rows[longest]], prompt_tokens=prompt_tokens, hook_names=hook_names,
        n_model_layers=len(decoder_layers(model)), metric_label=f"logit({target!r}) − logit({foil!r})",
    )
    png = attribution_graph_figure(
        [{"layer": n.layer, "offset": n.offset, "feature": n.feature, "attribution": n.attribution} for n in graph.nodes],
        [{"source_index": e.source, "target_index": e.target, "weight": e.weight} for e in graph.edges],
        f"{behaviour}: attribution graph ({len(graph.nodes)} nodes, {len(graph.edges)} edges)",
    )
    summary = {
        "behaviour": behaviour, "key_layers": layers, "method": section.method, "n_prompts": graph.n_prompts,
        "n_pairs_left_out": pairs.n_unequal_length, "n_nodes": len(graph.nodes), "n_edges": len(graph.edges),
        "n_feature_nodes": sum(not n.is_error for n in graph.nodes),
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
    top = nodes_table.sort(pl.col("attribution").abs(), descending=True).head(10)
    top_md = "| node | layer | offset | feature | attribution | exact patch effect |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| {r['node_id']} | {r['layer']} | {r['offset']} | {r['feature']} | {r['attribution']:+.4f} | "
        f"{'' if r['exact_patch_effect'] is None else format(r['exact_patch_effect'], '+.4f')} |"
        for r in top.iter_rows(named=True)
    )
    return TaskResult(
        metadata={
            "path": ctx.store.url(relpath),
            "n_nodes": len(graph.nodes),
            "n_feature_nodes": summary["n_feature_nodes"],
            "n_edges": len(graph.edges),
            "n_prompts": graph.n_prompts,
            "key_layers": {"raw_value": layers, "type": "json"},
            "method": section.method,
            "mean_logit_diff_clean": graph.mean_logit_diff_clean,
            "mean_logit_diff_corrupted": graph.mean_logit_diff_corrupted,
            "sign_agreement_with_exact_patching": agreement["sign_agreement"],
            "spearman_with_exact_patching": agreement["spearman"],
            "layer_totals": {"raw_value": summary["layer_totals"], "type": "json"},
            "top_nodes": _md(top_md),
            "graph": _md(png_markdown(png, f"{behaviour} attribution graph")),
        },
        data_version=combined_version(versions),
    )


def _experiments_fingerprint(ctx: TaskContext, behaviour: str, layers: list[int]) -> str:
    """Everything an experiment's result depends on: a mismatch discards earlier partial results."""
    store, config = ctx.store, ctx.config
    parts = {
        "interventions": config.interventions.model_dump(mode="json"),
        "hook_point": config.activations.hook_point,
        "prompts": hashlib.sha256(store.read_bytes(prompts_relpath(behaviour))).hexdigest(),
        "nodes": hashlib.sha256(store.read_bytes(f"{attribution_relpath(config, behaviour)}/nodes.parquet")).hexdigest(),
        # training.json records each SAE's weights sha256: no re-reading GBs of weights per layer.
        "saes": {layer: store.read_json(f"{saes_relpath(config, layer)}/training.json")["summary"]["weights_sha256"]
                 for layer in layers},
        "model": config.model.model_dump(mode="json"),
        "batch_size": config.baselines.batch_size,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def task_interventions(ctx: TaskContext) -> TaskResult:
    """Phase 5: ablation, patching and resampling experiments, written as they finish so a killed
    run resumes where it stopped; then the faithfulness curve of the graph's circuits."""
    import polars as pl

    from interp_assets.core.interventions import InterventionRunner, faithfulness_curve, plan_experiments, summarise
    from interp_assets.core.plots import faithfulness_figure, png_markdown

    config, section = ctx.config, ctx.config.interventions
    (behaviour,) = ctx.partition_keys
    store = ctx.store
    graph_relpath = attribution_relpath(config, behaviour)
    if not store.is_complete_dir(graph_relpath):
        raise RuntimeError(f"no attribution graph at {store.url(graph_relpath)}: materialize attribution_graphs first")
    nodes = store.read_parquet(f"{graph_relpath}/nodes.parquet").sort(pl.col("attribution").abs(), descending=True)
    ranked_all = [(r["layer"], r["offset"], r["feature"]) for r in nodes.iter_rows(named=True)]
    ranked_features = [node for node in ranked_all if node[2] >= 0]
    layers = sorted(config.activations.layers)
    key_layers = _key_layers(config)

    prompts = store.read_parquet(prompts_relpath(behaviour))
    test = prompts.filter(pl.col("split") == "test")
    model, tokenizer = load_model(ctx)
    saes = _load_saes(ctx, layers)
    test_pairs = _prompt_pairs(tokenizer, test)
    patching_pairs = _prompt_pairs(tokenizer, test.head(section.patching_pairs))
    runner = InterventionRunner(model, saes, config.activations.hook_point,
                                {"test": test_pairs, "patching": patching_pairs}, tokenizer.pad_token_id,
                                circuit_layers=key_layers, batch_size=config.baselines.batch_size)
    experiments = plan_experiments(ranked_features, layers, patching_pairs.max_length, section.ablation_groups,
                                   section.patching_positions, section.resample_samples)

    # Finished experiments so far: parts written every `checkpoint_every` experiments.
    checkpoint = interventions_checkpoint_relpath(config, behaviour)
    fingerprint = _experiments_fingerprint(ctx, behaviour, layers)
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

    for count, experiment in enumerate(pending, start=1):
        result = runner.run(experiment)
        ld_clean, ld_corrupt = runner.baseline(experiment.prompt_set)
        row = {
            "experiment_id": experiment.id, "family": experiment.family, "variant": experiment.variant,
            "prompt_set": experiment.prompt_set, "layer": experiment.layer, "position": experiment.offset,
            "group": experiment.group, "n_nodes": len(experiment.nodes), "samples": experiment.samples,
            "nodes": json.dumps([list(node) for node in experiment.nodes]),
            **summarise(experiment.id, result.ld, result.kl, ld_clean, ld_corrupt, section.bootstrap_samples),
        }
        done[experiment.id] = row
        buffer.append(row)
        if len(buffer) >= section.checkpoint_every:
            flush()
            ctx.log(f"interventions {behaviour}: {count}/{len(pending)} computed")
    flush()

    table = pl.DataFrame([done[e.id] for e in experiments], schema=_experiment_schema())
    sizes = sorted({0, *(round(len(ranked_all) * k / section.ablation_groups) for k in range(1, section.ablation_groups + 1))})
    curve = pl.DataFrame(faithfulness_curve(runner, "test", ranked_all, sizes))
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
    best_md = "| layer | position | recovery | 95% CI |\n|---|---|---|---|\n" + "\n".join(
        f"| {r['layer']} | {r['position']} | {r['recovery']:.3f} | [{r['recovery_ci_low']:.3f}, {r['recovery_ci_high']:.3f}] |"
        for r in best.iter_rows(named=True))
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
            "best_patching_sites": _md(best_md),
            "faithfulness_full_graph": full_circuit["faithfulness"],
            "complement_faithfulness_full_graph": full_circuit["complement_faithfulness"],
            "faithfulness_by_size": {"raw_value": dict(zip(curve["circuit_size"].to_list(),
                                                           curve["faithfulness"].to_list(), strict=True)), "type": "json"},
            "faithfulness_curve": _md(png_markdown(png, f"{behaviour} faithfulness")),
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
                     "recovery_ci_low", "recovery_ci_high", "kl_to_clean"),
    }
    return {name: dtype for dtype, names in columns.items() for name in names}


TASKS: dict[str, Callable[[TaskContext], TaskResult]] = {
    "language_model": task_language_model,
    "baselines": task_baselines,
    "activations": task_activations,
    "saes": task_saes,
    "attribution_graphs": task_attribution_graphs,
    "interventions": task_interventions,
}


# ---------------------------------------------------------------------------------------------
# Entry point


def _set_threads() -> None:
    threads = int(os.environ.get("INTERP_ASSETS_TORCH_THREADS", "0") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run_under_pipes(task: str) -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        started = time.perf_counter()
        extras = pipes.extras
        config = parse_config(extras["config"], source=extras.get("config_source", "<pipes extras>"))
        ctx = TaskContext(
            config=config,
            store=open_store(config.storage),
            partition_keys=list(extras.get("partition_keys") or []),
            log=pipes.log.info,
        )
        result = TASKS[task](ctx)
        if result.partitions:
            pipes.report_custom_message({"partitions": result.partitions})
        pipes.report_asset_materialization(
            metadata={**result.metadata, **provenance(config, started)}, data_version=result.data_version
        )


def _run_direct(task: str, config_path: str, partition_keys: list[str]) -> None:
    from interp_assets.config import load_config

    started = time.perf_counter()
    config = load_config(config_path)
    ctx = TaskContext(
        config=config,
        store=open_store(config.storage),
        partition_keys=partition_keys,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    result = TASKS[task](ctx)
    metadata = {**result.metadata, **provenance(config, started)}
    print(json.dumps({"data_version": result.data_version, "metadata": metadata, "partitions": result.partitions}))


def main(argv: list[str] | None = None) -> None:
    _checkpoint_on_usr1()
    parser = argparse.ArgumentParser(prog="python -m interp_assets.worker", description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--config", help="run without Dagster Pipes: the experiment config file")
    parser.add_argument("--partition", action="append", default=[], help="partition key (repeatable)")
    args = parser.parse_args(argv)
    _set_threads()
    from dagster_pipes import PipesEnvVarParamsLoader

    try:
        if PipesEnvVarParamsLoader().is_dagster_pipes_process():
            _run_under_pipes(args.task)
        elif args.config:
            _run_direct(args.task, args.config, args.partition)
        else:
            parser.error("not launched by Dagster Pipes: pass --config (and --partition) to run directly")
    finally:
        # Python's shutdown puts back the default action (death) of every signal it handles: a USR1
        # then would fail the job of a worker that has finished and reported. Ignored, it stays so.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


if __name__ == "__main__":
    main()
