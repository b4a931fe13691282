"""The experiment config: one typed model read from ``configs/*.yaml``.

Every section is a pydantic model that forbids unknown keys, so a typo fails when the Dagster
definitions load instead of being silently ignored. Checks that need the model (layer range,
hook point, model path) also run at load, before any job is launched: an invalid config never
reaches the cluster. Errors are ``ConfigError`` and name the field and the fix.

One file on purpose (over 400 lines): the whole schema, every section with its defaults and their
reasons, reads top to bottom in one place, as configs/tiny.yaml lists it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from interp_assets.artifacts import ARTIFACT_FOLDERS
from interp_assets.core.behaviours import BEHAVIOURS
from interp_assets.core.hooks import HOOK_POINTS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "configs" / "tiny.yaml"
CONFIG_ENV_VAR = "INTERP_ASSETS_CONFIG"


class ConfigError(ValueError):
    """An invalid experiment config; the message names the field and how to fix it."""


def _plain_path(value: str) -> str:
    if re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", value):
        raise ValueError(f"{value!r} holds a control character or line break: give a plain path or URL")
    return value


PathOrUrl = Annotated[str, AfterValidator(_plain_path)]
"""A folder, file or fsspec URL: no NUL (the OS refuses it) and no control characters."""


class _Section(BaseModel):
    # inf/nan never make sense in a study config (an infinite threshold silently prunes everything).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ExperimentSection(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """Short id of the study; used in run tags and artifact metadata."""
    paper_id: str = "unpublished"
    researcher: str = "unknown"
    seed: int = Field(default=0, ge=0)
    """Master seed; sections that draw random numbers derive their own from it."""


class TinyModelSection(_Section):
    """Shape and training budget of the tiny Qwen2 the project builds and trains itself."""

    hidden_size: int = Field(default=64, ge=8, le=4096)
    intermediate_size: int = Field(default=256, ge=8, le=16384)
    num_layers: int = Field(default=6, ge=1, le=64)
    num_heads: int = Field(default=4, ge=1, le=64)
    num_kv_heads: int = Field(default=2, ge=1, le=64)
    vocab_size: int = Field(default=768, ge=300, le=65536)
    """Embedding rows. The BPE stops merging once every corpus word is one token (~645 tokens with
    the 256 byte symbols), so 768 leaves every name/country/capital a single " Word" token; unused
    rows are padding, as in Qwen's own 151936-row embedding."""
    seq_len: int = Field(default=18, ge=8, le=2048)
    """Training window: the longest corpus sentence + EOS is 18 tokens; short ones pack two to a
    window (never attending across). Step cost grows with batch_size × seq_len (~55 ms for 64 × 18)."""
    train_steps: int = Field(default=1300, ge=1, le=1_000_000)
    """IOI is learned by ~500 steps and capitals by ~200; 1300 keeps the build under ~80 s on 2 cores
    (1500 steps took 80–88 s) with the same 100 % accuracy."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    lr: float = Field(default=3e-3, gt=0, le=1)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    init_std: float = Field(default=0.1, gt=0, le=1)
    """Init std of every weight matrix (Qwen2Config.initializer_range). Qwen2's 0.02 suits d_model in
    the thousands; at d_model 64 it leaves attention scores near 0 and IOI sat at chance for ~1000
    steps, while ~1/sqrt(d_model) learns it in ~500."""
    corpus_sentences: int = Field(default=40_000, ge=100, le=10_000_000)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelSection:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be divisible by num_kv_heads {self.num_kv_heads}")
        return self

    def spec(self):  # noqa: ANN201 - core.tiny_model.TinyModelSpec (torch stays out of the config's imports)
        """The builder's spec: these values, the only place the tiny model's defaults are written."""
        from interp_assets.core.tiny_model import TinyModelSpec

        return TinyModelSpec(**self.model_dump())


class ModelSection(_Section):
    source: Literal["tiny", "pretrained"]
    """``tiny``: built and trained by the project; ``pretrained``: any HF causal LM on disk."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
    """Model id recorded in metadata and in a storage path: a hub id such as
    ``Qwen/Qwen2.5-3B-Instruct`` (letters, digits, ``._-``, at most one ``/``; no ``..`` path tricks)."""
    path: PathOrUrl | None = None
    """Local directory holding config.json + weights (pretrained only). Relative to the config file."""
    revision: str | None = None
    """Hub revision the local copy was taken from, recorded as provenance."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the model runs in (activations are stored in ``activations.dtype``)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tiny: TinyModelSection | None = None

    @model_validator(mode="after")
    def _source_fields(self) -> ModelSection:
        if self.source == "tiny" and self.path is not None:
            raise ValueError("path is only for source: pretrained (the tiny model is built into the storage root)")
        if self.source == "pretrained" and self.tiny is not None:
            raise ValueError("the tiny: section is only for source: tiny")
        if self.source == "pretrained" and not self.path:
            raise ValueError(
                "source: pretrained needs path: the local directory of the model "
                "(e.g. `huggingface-cli download Qwen/Qwen2.5-3B-Instruct --local-dir <dir>`); "
                "nothing is downloaded at run time"
            )
        return self

    @property
    def tiny_spec(self) -> TinyModelSection:
        return self.tiny or TinyModelSection()


class PromptsSection(_Section):
    behaviours: tuple[str, ...] = BEHAVIOURS
    n_per_behaviour: int = Field(default=100, ge=4, le=100_000)
    train_fraction: float = Field(default=0.5, gt=0, lt=1)
    seed: int = Field(default=0, ge=0)

    @field_validator("behaviours")
    @classmethod
    def _known_behaviours(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [b for b in value if b not in BEHAVIOURS]
        if unknown:
            raise ValueError(f"unknown behaviour(s) {unknown}; choose from {list(BEHAVIOURS)}")
        if not value or len(set(value)) != len(value):
            raise ValueError("list each behaviour once, at least one")
        return value


class BaselinesSection(_Section):
    batch_size: int = Field(default=32, ge=1, le=4096)
    min_accuracy: float = Field(default=0.8, ge=0, le=1)
    """Asset check: clean accuracy (LD > 0) must reach this; chance is 0.5."""


def _parse_layers(value: Any) -> Any:
    # "10-24" is the inclusive range a researcher writes; a list is taken as is.
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
        if not match:
            raise ValueError(f"layers {value!r}: write an inclusive range such as '10-24' or a list [10, 12, 14]")
        first, last = int(match.group(1)), int(match.group(2))
        if last < first:
            raise ValueError(f"layers {value!r}: the range is empty (last < first)")
        return list(range(first, last + 1))
    return value


class ActivationsSection(_Section):
    layers: tuple[int, ...]
    """Layers to capture (partition keys of activations and saes): a list or an inclusive 'a-b'."""
    hook_point: str = "mlp_post"
    last_n_tokens: int = Field(default=5, ge=1, le=4096)
    """Behaviour prompts: capture only their last N token positions."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    batch_size: int = Field(default=32, ge=1, le=4096)
    shard_max_vectors: int = Field(default=65_536, ge=16, le=100_000_000)
    """Vectors per safetensors shard; capture memory is O(shard), not O(dataset)."""
    corpus_sequences: int = Field(default=2000, ge=1, le=100_000_000)
    """SAE-training corpus: number of sequences captured (all positions)."""
    corpus_seq_len: int = Field(default=32, ge=2, le=32_768)
    corpus_path: PathOrUrl | None = None
    """A UTF-8 text file, one document per line; default: text generated from the behaviours."""

    @field_validator("layers", mode="before")
    @classmethod
    def _parse_layer_range(cls, value: Any) -> Any:
        return _parse_layers(value)

    @field_validator("layers")
    @classmethod
    def _layers_sorted_unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("at least one layer")
        if any(layer < 0 for layer in value):
            raise ValueError("layers are 0-based and non-negative")
        if len(set(value)) != len(value):
            raise ValueError("a layer is listed twice")
        return tuple(sorted(value))

    @field_validator("hook_point")
    @classmethod
    def _known_hook_point(cls, value: str) -> str:
        if value not in HOOK_POINTS:
            raise ValueError(f"unknown hook point {value!r}; choose from {sorted(HOOK_POINTS)}")
        return value


class SaeSection(_Section):
    """SAE hyper-parameters (Phase 3). Defaults are the spec's."""

    architecture: Literal["relu", "topk"] = "relu"
    """relu: ReLU + L1 weighted by decoder norms (SAELens "standard"); topk: k active + AuxK."""
    expansion_factor: int = Field(default=4, ge=1, le=256)
    k: int = Field(default=64, ge=1, le=65_536)
    batch_size: int = Field(default=256, ge=1, le=1_000_000)
    steps: int = Field(default=50_000, ge=1, le=100_000_000)
    lr: float = Field(default=4e-4, gt=0, le=1)
    lr_warmup_steps: int = Field(default=1000, ge=0)
    lr_decay_steps: int = Field(default=10_000, ge=0)
    l1_coefficient: float = Field(default=5.0, ge=0)
    l1_warmup_steps: int = Field(default=5000, ge=0)
    aux_k_coefficient: float = Field(default=1 / 32, ge=0)
    dead_window_steps: int = Field(default=1000, ge=1)
    """A feature that has not fired for this many steps counts as dead."""
    grad_clip: float = Field(default=1.0, gt=0)
    checkpoint_every: int = Field(default=5000, ge=1)
    log_every: int = Field(default=500, ge=1)
    shuffle_buffer_vectors: int = Field(default=262_144, ge=256, le=1_000_000_000)
    """Vectors held in memory for shuffling (memory is this × d_in × 2 bytes, whatever the data)."""
    eval_vectors: int = Field(default=4096, ge=1, le=10_000_000)
    """Held-out corpus vectors for explained variance (never trained on)."""
    ce_eval_texts: int = Field(default=64, ge=1, le=100_000)
    """Corpus documents used for CE-loss recovered (SAE spliced into the model)."""
    min_explained_variance: float = Field(default=0.7, ge=0, le=1)
    max_dead_fraction: float = Field(default=0.2, ge=0, le=1)
    seed: int = Field(default=0, ge=0)
    data_source: Literal["cached", "stream"] = "cached"
    """cached: train from the stored ``activations`` (materialized first). stream: the SAE worker
    runs the model itself and trains the SAEs of a group of layers from one forward pass per batch
    of the same corpus; nothing is stored and ``saes`` does not depend on ``activations``. The two
    shuffle at different grain (stored vectors vs corpus texts), so their SAEs differ: the field is
    part of the ``sae`` code version."""
    stream_layers_per_task: int | None = Field(default=None, ge=1, le=1024)
    """stream only: layers trained together per worker (per SLURM array task); default all of the
    run's layers in one. Size it to GPU memory: model weights + per layer of the group the SAE's
    FP32 weights, gradients and Adam state (32 × d_in × d_sae bytes: 15.5 GB at 11008 → 44032)
    and its step's [batch, d_sae] activations; on the host, one shuffle chunk per layer
    (≤ shuffle_buffer_vectors × d_in × 2 bytes). Scheduling only: not in the code version (a layer's
    SAE is the same whatever group it trains in)."""

    @model_validator(mode="after")
    def _schedule_fits(self) -> SaeSection:
        if self.lr_warmup_steps + self.lr_decay_steps > self.steps:
            raise ValueError(
                f"lr_warmup_steps + lr_decay_steps ({self.lr_warmup_steps} + {self.lr_decay_steps}) exceed steps ({self.steps})"
            )
        if self.stream_layers_per_task is not None and self.data_source != "stream":
            raise ValueError(
                "stream_layers_per_task is only for data_source: stream (drop it, or set data_source: stream)"
            )
        return self

    def trainer_config(self):  # noqa: ANN201 - core.sae_training.TrainerConfig (torch stays out of the config's imports)
        """The trainer's settings: these values, the only place the SAE defaults are written."""
        from interp_assets.core.sae import CONFIG_TO_SAELENS_ARCHITECTURE
        from interp_assets.core.sae_training import TrainerConfig

        return TrainerConfig(
            architecture=CONFIG_TO_SAELENS_ARCHITECTURE[self.architecture],
            **self.model_dump(include=set(TrainerConfig.__dataclass_fields__) - {"architecture"}),
        )

    def layer_groups(self, layers: list[Any]) -> list[list[Any]]:
        """How a layer range splits into units that train independently (a worker, or one SLURM array
        task, each): one layer each, except streamed SAEs, which go in groups of
        ``stream_layers_per_task`` (default: the whole range) sharing one forward pass per batch.
        The layers keep their type and the range's order."""
        if self.data_source != "stream":
            return [[layer] for layer in layers]
        size = self.stream_layers_per_task or len(layers) or 1
        return [list(layers[i : i + size]) for i in range(0, len(layers), size)]


class AttributionSection(_Section):
    key_layers: tuple[int, ...] = ()
    """Layers whose SAE features form the graph; must be among activations.layers. Empty: all."""
    method: Literal["attribution_patching", "integrated_gradients"] = "attribution_patching"
    ig_steps: int = Field(default=10, ge=1, le=1000)
    node_threshold: float = Field(default=0.01, ge=0)
    edge_threshold: float = Field(default=0.01, ge=0)
    max_nodes_per_layer: int = Field(default=50, ge=1, le=100_000)


class InterventionsSection(_Section):
    ablation_groups: int = Field(default=10, ge=1, le=1000)
    patching_pairs: int = Field(default=50, ge=1, le=100_000)
    patching_positions: int = Field(default=20, ge=1, le=4096)
    resample_samples: int = Field(default=100, ge=1, le=100_000)
    bootstrap_samples: int = Field(default=1000, ge=10, le=1_000_000)
    checkpoint_every: int = Field(default=10, ge=1)
    random_circuit_draws: int = Field(default=10, ge=1, le=10_000)
    """Random circuits per size (drawn from the key layers' active nodes) for the faithfulness baseline."""
    min_faithfulness_denominator: float = Field(default=3.0, ge=0)
    """Logits. The faithfulness check fails when the lower end of the 95 % CI of F(M) − F(∅) (what
    mean-ablating every key-layer node costs) is below it: over a smaller denominator faithfulness
    is too noisy to support a claim (tiny model: IOI, which runs mostly through attention, about
    2.3 logits; capitals about 7)."""


class AutomationSection(_Section):
    enabled: bool = True
    """Start the rematerialize_stale sensor with `dagster dev` (it can be toggled in the UI)."""
    interval_seconds: int = Field(default=30, ge=5, le=86_400)
    """How often the sensor looks for stale or missing partitions."""


class StorageSection(_Section):
    root: PathOrUrl = "../dagster_home/storage"
    """Where artifacts live: a local folder (relative to the config file) or an fsspec URL."""
    tiers: dict[str, PathOrUrl] = {}
    """Other roots for some top-level folders, as the lab keeps them: e.g. ``activations`` and
    ``checkpoints`` on the hot scratch filesystem, everything else on the versioned bucket."""

    @field_validator("tiers")
    @classmethod
    def _known_folders(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(ARTIFACT_FOLDERS))
        if unknown:
            raise ValueError(f"unknown artifact folder(s) {unknown}; a tier holds one of {list(ARTIFACT_FOLDERS)}")
        empty = sorted(folder for folder, root in value.items() if not root.strip())
        if empty:
            raise ValueError(f"empty root for {empty}: give a folder or an fsspec URL, or drop the entry")
        return value


_PARTITION_SELECTING_FIELDS: dict[str, set[str]] = {"activations": {"layers"}, "sae": {"stream_layers_per_task"}}
"""Fields that choose the partitions, or how they are scheduled, rather than what a partition
holds (not in code versions)."""


class ExperimentConfig(_Section):
    experiment: ExperimentSection
    model: ModelSection
    prompts: PromptsSection = PromptsSection()
    baselines: BaselinesSection = BaselinesSection()
    activations: ActivationsSection
    sae: SaeSection = SaeSection()
    attribution: AttributionSection = AttributionSection()
    interventions: InterventionsSection = InterventionsSection()
    automation: AutomationSection = AutomationSection()
    storage: StorageSection = StorageSection()

    source_path: str | None = Field(default=None, exclude=True)
    """Where this config was read from (not part of any hash)."""

    @model_validator(mode="after")
    def _key_layers_captured(self) -> ExperimentConfig:
        missing = sorted(set(self.attribution.key_layers) - set(self.activations.layers))
        if missing:
            raise ValueError(
                f"attribution.key_layers {missing} are not in activations.layers "
                f"{list(self.activations.layers)}: add them there or drop them here"
            )
        return self

    def section_hash(self, *sections: str) -> str:
        """sha256 (16 hex) of the named sections: the config part of an asset's code version.

        ``activations.layers`` is left out: it decides WHICH layer partitions exist, not what any
        one of them contains, so adding a layer adds a (missing) partition and leaves the
        existing layers fresh."""
        payload = {
            name: getattr(self, name).model_dump(mode="json", exclude=_PARTITION_SELECTING_FIELDS.get(name))
            for name in sections
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    @property
    def layer_keys(self) -> list[str]:
        return [str(layer) for layer in self.activations.layers]

    def to_payload(self) -> dict[str, Any]:
        """The whole config as plain JSON, handed to workers so they never re-read a changed file."""
        return self.model_dump(mode="json")


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid experiment config {source}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/tiny.yaml for every key)"
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
        model = config.model
        if model.path is not None:
            model = model.model_copy(update={"path": _resolve_relative(model.path, base_dir)})
        config = config.model_copy(update={"storage": storage, "model": model})
    return config


def model_num_layers(config: ExperimentConfig) -> int:
    """Number of decoder layers of the configured model, read from its config (never hard-coded)."""
    if config.model.source == "tiny":
        return config.model.tiny_spec.num_layers
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


def load_config(path: str | Path | None = None) -> ExperimentConfig:
    """Read, validate and check a config file; ``None`` means $INTERP_ASSETS_CONFIG or configs/tiny.yaml."""
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
    config = parse_config(data, source=str(config_path), base_dir=config_path.parent)
    check_against_model(config)
    return config
