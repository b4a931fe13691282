"""The language model every phase reads: the tiny Qwen2 built and trained into the storage root,
or a pretrained model on disk fingerprinted (never downloaded)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from interp_assets.artifacts import model_card_relpath, tiny_model_relpath
from interp_assets.tasks.common import TaskContext, TaskResult, combined_version
from resources.storage import sha256_file


def task_language_model(ctx: TaskContext) -> TaskResult:
    """The tiny model: build + train into the storage root. A pretrained model: fingerprint it."""
    config = ctx.config
    if config.model.source == "pretrained":
        return _fingerprint_pretrained(ctx)
    if config.model.source == "random":
        return _build_random(ctx)
    from interp_assets.core.tiny_model import build_tiny_model

    spec = config.model.tiny_spec.spec()
    relpath = tiny_model_relpath(config)
    # The folder name is the hash of the spec, and the build is deterministic: a complete folder is
    # exactly what a rebuild would produce, so it is reused (and re-hashed).
    files, summary = _built(ctx, relpath, "tiny model", lambda tmp: build_tiny_model(spec, tmp, log=ctx.log))
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


def _build_random(ctx: TaskContext) -> TaskResult:
    """A random-weight model of a real architecture (a rehearsal of the study's shapes): built once
    per spec and dtype, deterministic from its seed."""
    from interp_assets.core.random_model import RandomModelSpec, build_random_model

    section = ctx.config.model.random
    relpath = tiny_model_relpath(ctx.config)
    files, _ = _built(ctx, relpath, "random model", lambda tmp: build_random_model(
        RandomModelSpec(**section.model_dump()), tmp, ctx.config.model.dtype, log=ctx.log))
    return TaskResult(
        metadata={
            "path": ctx.store.url(relpath),
            "files": {"raw_value": files, "type": "json"},
            "num_layers": section.num_layers,
            "hidden_size": section.hidden_size,
            "intermediate_size": section.intermediate_size,
            "vocab_size": section.vocab_size,
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


def _built(ctx: TaskContext, relpath: str, what: str, build) -> tuple[dict[str, str], dict]:  # noqa: ANN001
    """Build a model folder once (``build(tmp) -> summary``) or reuse the complete one; returns its
    files' sha256 (the data version's parts; the summary's wall-clock figures are not the model's
    identity) and the build summary."""
    if ctx.store.is_complete_dir(relpath):
        ctx.log(f"{what} {ctx.store.url(relpath)} already built for this spec: reusing it")
        summary = ctx.store.read_json(f"{relpath}/build_summary.json")
    else:
        with tempfile.TemporaryDirectory(prefix="model-") as tmp:
            summary = build(tmp)
            (Path(tmp) / "build_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
            ctx.store.put_dir(relpath, tmp)
    local = ctx.store.local_dir(relpath)
    files = {p.name: sha256_file(p) for p in sorted(local.iterdir())
             if p.is_file() and p.name not in {"_COMPLETE", "build_summary.json"}}
    return files, summary
