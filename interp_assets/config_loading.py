"""Reading an experiment config file into a checked ``ExperimentConfig``: the YAML, ``base:``
merging, relative paths, the error text (every field as the user wrote it), and the checks that
need more than the schema — the model's own config (layer range) and the corpus files. The schema
itself is ``interp_assets/config.py``, which re-exports ``load_config`` and the checks, so callers
import them from there."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from interp_assets.config import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, ConfigError, ExperimentConfig


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid experiment config {source}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/experiments/tiny.yaml for every key)"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        # Cross-section checks name their fields in the message itself.
        lines.append(f"  {field}: {message}" if field else f"  {message}")
    return "\n".join(lines)


def _resolve_relative(path: str, base_dir: Path) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return str((base_dir / path).resolve())


def parse_config(data: Any, source: str = "<dict>", base_dir: Path | None = None) -> ExperimentConfig:
    """Validate a config mapping (schema only: no file system access)."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid experiment config {source}: the top level must be a mapping of sections")
    try:
        config = ExperimentConfig.model_validate({**data, "source_path": source})
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None
    if base_dir is not None:
        storage = config.storage.model_copy(update={
            "root": _resolve_relative(config.storage.root, base_dir),
            "tiers": {folder: _resolve_relative(root, base_dir) for folder, root in config.storage.tiers.items()},
        })
        model, corpus = config.model, config.corpus
        if model.path is not None:
            model = model.model_copy(update={"path": _resolve_relative(model.path, base_dir)})
        if corpus.path is not None:
            corpus = corpus.model_copy(update={"path": _resolve_relative(corpus.path, base_dir)})
        config = config.model_copy(update={"storage": storage, "model": model, "corpus": corpus})
    return config


def model_num_layers(config: ExperimentConfig) -> int:
    """Number of decoder layers of the configured model, read from its config (never hard-coded)."""
    if config.model.source == "tiny":
        return config.model.tiny_spec.num_layers
    if config.model.source == "random":
        return config.model.random.num_layers
    model_dir = Path(config.model.path or "")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"model.path: {model_dir} has no config.json (model {config.model.name}). Download it first, "
            f"e.g. `huggingface-cli download {config.model.name} --local-dir {model_dir}`, "
            "or fix model.path; nothing is downloaded at run time"
        )
    hf_config = json.loads(config_file.read_text())
    hf_config = hf_config.get("text_config", hf_config)  # multimodal wrappers nest the decoder config
    if "num_hidden_layers" not in hf_config:
        raise ConfigError(f"model.path: {config_file} has no num_hidden_layers: is this a causal LM?")
    return int(hf_config["num_hidden_layers"])


def check_against_model(config: ExperimentConfig) -> None:
    """Checks that need the model's own config: model path present, layers in range."""
    n_layers = model_num_layers(config)
    out_of_range = [layer for layer in config.activations.layers if layer >= n_layers]
    if out_of_range:
        raise ConfigError(
            f"activations.layers: {out_of_range} out of range; model {config.model.name} has "
            f"{n_layers} layers (0..{n_layers - 1})"
        )


def corpus_spec(config: ExperimentConfig):  # noqa: ANN201 - core.corpus.CorpusSpec
    """The corpus reader's spec: ``corpus:`` plus the seed of the generated corpus."""
    from interp_assets.artifacts import behaviour_seed
    from interp_assets.core.corpus import CorpusSpec

    section = config.corpus
    return CorpusSpec(
        **section.model_dump(exclude={"allow_generated_with_pretrained"}),
        generated_seed=behaviour_seed(config.experiment.seed, "corpus"),
    )


def check_corpus(config: ExperimentConfig) -> None:
    """The corpus checks that need the files (present, column there, dataset opens, UTF-8)."""
    from interp_assets.core.corpus import CorpusError, check_corpus as check_files, content_fingerprint

    spec = corpus_spec(config)
    try:
        check_files(spec)
        content_fingerprint(spec)  # hashes each file once per change, and checks text is UTF-8
    except CorpusError as error:
        raise ConfigError(f"invalid experiment config {config.source_path}: {error}") from None


def corpus_identity(config: ExperimentConfig) -> str:
    """sha256 (16 hex) of what the SAE windows are made of beyond the config's settings: the
    corpus files' bytes and, for a pretrained model, its tokenizer files."""
    from interp_assets.core.corpus import content_fingerprint, tokenizer_files

    extra = tokenizer_files(config.model.path) if config.model.source == "pretrained" and config.model.path else []
    return content_fingerprint(corpus_spec(config), extra)[:16]


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _with_base(data: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """``base: other.yaml`` (relative to this file): that config with this file's keys on top, so an
    experiment that differs in a few settings says only those. The base's relative paths are
    read from this file's folder: keep both in one folder. One level, no chains."""
    base_name = data["base"]
    if not isinstance(base_name, str) or not base_name.strip():
        raise ConfigError(f"invalid experiment config {config_path}:\n  base: give the file name of another config "
                          "(e.g. base: tiny.yaml), or drop the key")
    base_path = (config_path.parent / base_name).resolve()
    if not base_path.is_file() or base_path == config_path:
        raise ConfigError(f"invalid experiment config {config_path}:\n  base: {base_name!r} is not another config "
                          f"file next to it ({base_path} does not exist or is this file)")
    base = yaml.safe_load(base_path.read_text(encoding="utf-8"))
    if not isinstance(base, dict) or "base" in base:
        raise ConfigError(f"invalid experiment config {config_path}:\n  base: {base_path} must be a config "
                          "without a base of its own")
    own = {key: value for key, value in data.items() if key != "base"}
    if not isinstance(own.get("experiment"), dict) or "name" not in own["experiment"]:
        raise ConfigError(f"invalid experiment config {config_path}:\n  experiment.name: a config built on "
                          f"base {base_name!r} must name its own experiment (else both would share asset keys "
                          "and a storage folder)")
    if "prefix" not in (base.get("storage") or {}) or "prefix" in (own.get("storage") or {}):
        return _merged(base, own)
    # The base's prefix is its own experiment's folder, not this one's: default to this name.
    base = {**base, "storage": {k: v for k, v in base["storage"].items() if k != "prefix"}}
    return _merged(base, own)


def load_config(path: str | Path | None = None) -> ExperimentConfig:
    """Read, validate and check a config file; ``None`` means $INTERP_ASSETS_CONFIG or configs/experiments/tiny.yaml."""
    config_path = Path(path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH).resolve()
    if not config_path.is_file():
        raise ConfigError(f"{CONFIG_ENV_VAR}: config file {config_path} does not exist")
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"invalid experiment config {config_path}: not UTF-8 text ({error.reason} at byte "
                          f"{error.start})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid experiment config {config_path}: not valid YAML: {error}") from None
    if isinstance(data, dict) and "base" in data:
        data = _with_base(data, config_path)
    config = parse_config(data, source=str(config_path), base_dir=config_path.parent)
    check_against_model(config)
    check_corpus(config)
    return config
