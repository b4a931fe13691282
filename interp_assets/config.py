"""The experiment config: one typed model read from ``configs/*.yaml``.

Every section is a pydantic model that forbids unknown keys, so a typo fails when the Dagster
definitions load instead of being silently ignored. Checks that need the model (layer range,
hook point, model path) also run at load, before any job is launched: an invalid config never
reaches the cluster. Errors are ``ConfigError`` and name the field and the fix.

One file on purpose (over 400 lines): the whole schema, every section with its defaults and their
reasons, reads top to bottom in one place, as configs/experiments/tiny.yaml lists it. Reading a
file into a checked config (YAML, ``base:``, error text, model and corpus checks) is
``config_loading.py``; ``load_config`` is re-exported here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from interp_assets.artifacts import ARTIFACT_FOLDERS
from interp_assets.core.behaviours import BEHAVIOURS
from interp_assets.core.hooks import HOOK_POINTS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = PROJECT_ROOT / "configs" / "experiments"
"""The lab's experiments: every config here is a code location of the workspace (interp_assets/workspace.py)."""
DEFAULT_CONFIG_PATH = EXPERIMENTS_DIR / "tiny.yaml"
DEFAULT_STUDIES_ROOT = PROJECT_ROOT / "studies"
"""Where artifacts live by default, apart from the Dagster instance's own files (dagster_home/)."""
SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
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
    name: str
    """The experiment's identifier: its asset-key prefix, code-location name, pool names, run tag
    and (unless ``storage.prefix`` says otherwise) its folder under the storage root."""
    paper_id: str = "unpublished"
    researcher: str = "unknown"
    seed: int = Field(default=0, ge=0)
    """Master seed; sections that draw random numbers derive their own from it."""

    @field_validator("name")
    @classmethod
    def _safe_identifier(cls, value: str) -> str:
        # Lowercase only: two experiments "Tiny" and "tiny" would share a folder on a
        # case-insensitive file system (macOS) while Dagster keeps their asset keys apart.
        if not SAFE_NAME.match(value):
            suggestion = re.sub(r"[^a-z0-9_]+", "_", value.lower()).strip("_")[:40] or "my_study"
            if not suggestion[0].isalpha():
                suggestion = f"x_{suggestion}"[:40]
            raise ValueError(
                f"{value!r} is not a safe identifier: it becomes the experiment's asset-key prefix, code "
                "location, pool names and storage folder; use lowercase letters, digits and underscores, "
                f"starting with a letter, at most 40 characters (e.g. {suggestion!r})")
        return value


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


class RandomModelSection(_Section):
    """A Qwen2 of any real architecture with random weights, built from a seed without training:
    a rehearsal of a study's shapes (memory, time, bytes) on hardware that has no copy of the real
    weights. Its behaviours are noise; its widths are the real ones."""

    hidden_size: int = Field(ge=8, le=65_536)
    intermediate_size: int = Field(ge=8, le=262_144)
    num_layers: int = Field(ge=1, le=256)
    num_heads: int = Field(ge=1, le=256)
    num_kv_heads: int = Field(ge=1, le=256)
    vocab_size: int = Field(ge=1024, le=1_048_576)
    """Embedding rows. The tokenizer is the tiny model's byte-level BPE (``tokenizer_vocab_size``
    ids); the rows above it are never looked up, as Qwen's own unused rows."""
    tokenizer_vocab_size: int = Field(default=768, ge=300, le=65_536)
    tie_word_embeddings: bool = True
    max_position_embeddings: int = Field(default=32_768, ge=128, le=1_048_576)
    rope_theta: float = Field(default=1_000_000.0, gt=0)
    rms_norm_eps: float = Field(default=1e-6, gt=0, lt=1)
    init_std: float = Field(default=0.02, gt=0, le=1)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _shapes_agree(self) -> RandomModelSection:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be divisible by num_kv_heads {self.num_kv_heads}")
        if self.tokenizer_vocab_size > self.vocab_size:
            raise ValueError(f"tokenizer_vocab_size {self.tokenizer_vocab_size} exceeds vocab_size {self.vocab_size}")
        return self


class ModelSection(_Section):
    source: Literal["tiny", "pretrained", "random"]
    """``tiny``: built and trained by the project; ``pretrained``: any HF causal LM on disk;
    ``random``: a Qwen2 of the ``random:`` section's architecture with seeded random weights
    (no training), for rehearsing a study's shapes."""
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
    random: RandomModelSection | None = None

    @model_validator(mode="after")
    def _source_fields(self) -> ModelSection:
        if self.source in ("tiny", "random") and self.path is not None:
            raise ValueError(f"path is only for source: pretrained (the {self.source} model is built into the storage root)")
        if self.source != "tiny" and self.tiny is not None:
            raise ValueError("the tiny: section is only for source: tiny")
        if self.source != "random" and self.random is not None:
            raise ValueError("the random: section is only for source: random")
        if self.source == "random" and self.random is None:
            raise ValueError("source: random needs a random: section with the architecture (hidden_size, "
                             "intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size)")
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

    @model_validator(mode="before")
    @classmethod
    def _moved_to_corpus(cls, data: Any) -> Any:
        moved = {"corpus_sequences": "corpus.max_tokens (a token budget) or corpus.generated_documents",
                 "corpus_seq_len": "corpus.seq_len", "corpus_path": "corpus.path (with corpus.source)"}
        if isinstance(data, dict):
            for key, where in moved.items():
                if key in data:
                    raise ValueError(f"activations.{key} has moved: write {where} in the corpus: section")
        return data

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


class CorpusSection(_Section):
    """The text the SAEs train on and are judged on (core/corpus.py says exactly how it is read,
    split and packed). Everything is local: nothing is downloaded."""

    source: Literal["generated", "text", "jsonl", "parquet", "dataset"] = "generated"
    """generated: the behaviour sentences the tiny model learned from (its default; a pretrained
    model needs real text). text: UTF-8 files; jsonl / parquet: files with a text column; dataset:
    a Hugging Face ``datasets`` folder written by ``save_to_disk``."""
    path: PathOrUrl | None = None
    """A file, or a folder of files of that kind (read in sorted order), or the dataset folder.
    Relative to the config file. Local paths only."""
    text_column: str = "text"
    """jsonl / parquet / dataset: the column holding each document."""
    text_documents: Literal["line", "paragraph", "file"] = "paragraph"
    """text: what one document is: a line, a paragraph (lines up to a blank line), or a file."""
    dataset_split: str | None = None
    """dataset: the split of a ``DatasetDict`` folder (default ``train``)."""
    generated_documents: int = Field(default=16_000, ge=10, le=10_000_000)
    """generated: sentences generated (from ``experiment.seed``)."""
    seq_len: int = Field(default=32, ge=2, le=32_768)
    """Tokens per packed window (the SAE's context size)."""
    packing: Literal["concatenate", "document"] = "concatenate"
    """concatenate: documents + end-of-text in one stream cut into windows (SAELens's packing, for
    pretrained models). document: one document per window, cut and padded (a model trained on
    one document per context: the tiny model)."""
    max_tokens: int = Field(default=98_304, ge=2, le=100_000_000_000)
    """Training token budget: the first max_tokens // seq_len windows of the training documents."""
    eval_tokens: int = Field(default=8_192, ge=2, le=1_000_000_000)
    """Held-out token budget for every figure that judges an SAE."""
    held_out_fraction: float = Field(default=0.1, gt=0, lt=1)
    """Share of documents held out, chosen by a hash of each document's text."""
    exclude_first_positions: int = Field(default=0, ge=0)
    """Positions at the start of every window fed as context but never used as SAE data (Qwen's
    position-0 attention-sink activations are hundreds of times larger than the rest)."""
    allow_generated_with_pretrained: bool = False
    """Let a pretrained model use the generated corpus (a plumbing check, not a study)."""

    @model_validator(mode="after")
    def _source_fields(self) -> CorpusSection:
        if self.source == "generated" and self.path is not None:
            raise ValueError("path is for a file-based source: set source (text, jsonl, parquet, dataset) or drop path")
        if self.source != "generated" and not self.path:
            raise ValueError(f"source: {self.source} needs path: the local file or folder of the corpus")
        if self.path and "://" in self.path:
            raise ValueError(f"path {self.path!r}: the corpus is read from a local file or folder, not a URL")
        if self.exclude_first_positions >= self.seq_len:
            raise ValueError(f"exclude_first_positions {self.exclude_first_positions} leaves nothing of a "
                             f"seq_len {self.seq_len} window")
        for budget in ("max_tokens", "eval_tokens"):
            if getattr(self, budget) < self.seq_len:
                raise ValueError(f"{budget} {getattr(self, budget)} is less than one window of seq_len {self.seq_len}")
        return self


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
    """Held-out vectors for the training curve's explained variance at the end of training (the
    summary's figures use all of ``corpus.eval_tokens``)."""
    dense_threshold: float = Field(default=0.1, gt=0, le=1)
    """A latent firing on more than this share of held-out tokens counts as dense."""
    min_ce_denominator: float = Field(default=0.05, ge=0)
    """Nats: below this CE increase from zero-ablating the layer, CE-recovered is flagged as noise."""
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


VARIANT_FIXED_FIELDS = {
    "data_source": "it decides what saes reads",
    "stream_layers_per_task": "it decides how the jobs are grouped",
    "eval_vectors": "variants are judged on the same held-out figures",
    "dense_threshold": "variants are judged on the same held-out figures",
    "min_ce_denominator": "variants are judged on the same held-out figures",
    "min_explained_variance": "the quality bar (saes' checks) is the study's",
    "max_dead_fraction": "the quality bar (saes' checks) is the study's",
}
"""sae.* fields a variant cannot override, and why: one setting for the whole asset."""

SELECTION_METRICS: dict[str, bool] = {
    "ce_loss_recovered": True,
    "ce_loss_recovered_mean_ablation": True,
    "explained_variance": True,
    "mse_normalised": False,
    "kl_with_sae": False,
    "ce_loss_with_sae": False,
}
"""Held-out figures a selection can rank variants by (core/sae_eval.py), and whether higher is better."""


class SaeSelectionSection(_Section):
    """How ``sae_selection`` picks one variant of ``sae_variants`` per layer: among the variants whose
    held-out L0 is at most ``max_l0``, the best by ``metric`` (ties: the first in the config)."""

    metric: Literal[tuple(SELECTION_METRICS)] = "ce_loss_recovered"  # type: ignore[valid-type]
    """A held-out figure: ce_loss_recovered, ce_loss_recovered_mean_ablation and explained_variance
    are maximised; mse_normalised, kl_with_sae and ce_loss_with_sae minimised."""
    max_l0: float | None = Field(default=None, gt=0)
    """Mean latents per held-out token at most this; null: no bound."""

    @property
    def higher_is_better(self) -> bool:
        return SELECTION_METRICS[self.metric]

    def describe(self) -> str:
        best = "highest" if self.higher_is_better else "lowest"
        bound = f" among the variants with held-out L0 ≤ {self.max_l0:g}" if self.max_l0 is not None else ""
        return f"{best} held-out {self.metric}{bound}"


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
    patching_layers: tuple[int, ...] | None = None
    """Layers the activation-patching sweep patches (raw and through the SAE); null: every
    captured layer. Each needs its SAE: the key layers' stay loaded, the others are read one at a
    time, so a sweep over many layers costs reading each SAE once, not holding them all."""
    random_circuit_draws: int = Field(default=10, ge=1, le=10_000)
    """Random circuits per size (drawn from the key layers' active nodes) for the faithfulness baseline."""
    min_faithfulness_denominator: float = Field(default=3.0, ge=0)
    """Logits. The faithfulness check fails when the lower end of the 95 % CI of F(M) − F(∅) (what
    mean-ablating every key-layer node costs) is below it: over a smaller denominator faithfulness
    is too noisy to support a claim (tiny model: IOI, which runs mostly through attention, about
    2.3 logits; capitals about 7)."""


class DashboardsSection(_Section):
    """Feature dashboards (the ``feature_dashboards`` asset, one per SAE layer)."""

    n_texts: int = Field(default=256, ge=1, le=10_000_000)
    """Evaluation text: at most this many of the corpus's held-out windows (documents no SAE
    trained on; all of corpus.eval_tokens when it holds fewer)."""
    top_k: int = Field(default=20, ge=1, le=1000)
    """Top activating contexts kept per latent (memory: d_sae × top_k × context tokens)."""
    context_before: int = Field(default=12, ge=0, le=4096)
    """Tokens shown before a context's max-activating token."""
    context_after: int = Field(default=4, ge=0, le=4096)
    """Tokens shown after it."""
    n_logit_tokens: int = Field(default=10, ge=1, le=1000)
    """Output tokens listed as promoted and as suppressed per latent."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Windows per forward pass (memory: batch × seq_len × d_sae floats of SAE activations)."""
    features_in_ui: int = Field(default=10, ge=1, le=1000)
    """Features of each layer shown with their contexts in the asset's metadata."""
    logit_latents: int | None = Field(default=None, ge=1)
    """Promoted/suppressed token tables for only this many latents, those that fire most on the
    text (null: every latent). The tables cost d_sae × d_model × vocab multiply-adds per layer
    (27 TFLOP at Qwen2.5-3B's widths): seconds on a GPU, minutes per layer on a CPU."""


class AutomationSection(_Section):
    enabled: bool = True
    """Start the rematerialize_stale sensor with `dagster dev` (it can be toggled in the UI)."""
    interval_seconds: int = Field(default=30, ge=5, le=86_400)
    """How often the sensor looks for stale or missing partitions."""


class TrackingSection(_Section):
    mlflow_uri: str | None = None
    """An MLflow tracking server (http(s)://host:port): each trained SAE becomes one run there
    (interp_assets/tracking.py). null: no tracking. Credentials go in MLflow's own environment
    variables (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN), never here."""

    @field_validator("mlflow_uri")
    @classmethod
    def _http_without_credentials(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an MLflow server address: give http(s)://host:port (the lab's "
                             "tracking server), or null for no tracking")
        if parts.username or parts.password:
            raise ValueError("holds a user name or password: the config is shown in the UI and handed to every "
                             "job; give them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                             "MLFLOW_TRACKING_TOKEN) in the environment instead")
        return value


class StorageSection(_Section):
    root: PathOrUrl = str(DEFAULT_STUDIES_ROOT)
    """Where the lab's artifacts live: a local folder (relative to the config file) or an fsspec
    URL. Never inside DAGSTER_HOME: the study's data and the instance's bookkeeping stay apart."""
    prefix: str
    """This experiment's folder under ``root`` (and under every tier): defaults to
    ``experiment.name``, so two experiments never write each other's files."""
    tiers: dict[str, PathOrUrl] = {}
    """Other roots for some top-level folders, as the lab keeps them: e.g. ``activations`` and
    ``checkpoints`` on the hot scratch filesystem, everything else on the versioned bucket."""

    @field_validator("prefix")
    @classmethod
    def _relative_folder(cls, value: str) -> str:
        parts = value.split("/")
        if not value or any(not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", part) for part in parts):
            raise ValueError(f"{value!r} is not a relative folder: give one or more names of letters, digits, '.', "
                             "'_' or '-' separated by '/' (no '..', no leading '/'), or leave it out to use "
                             "experiment.name")
        return value

    @property
    def location(self) -> str:
        """root/prefix: the folder (or URL) every relpath of interp_assets.artifacts is under."""
        return join_root(self.root, self.prefix)

    def tier_locations(self) -> dict[str, str]:
        return {folder: join_root(root, self.prefix) for folder, root in self.tiers.items()}

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


def join_root(root: str, prefix: str) -> str:
    if "://" in root:
        return f"{root.rstrip('/')}/{prefix}"
    return os.path.join(root, prefix)


_PARTITION_SELECTING_FIELDS: dict[str, set[str]] = {"activations": {"layers"}, "sae": {"stream_layers_per_task"}}
"""Fields that choose the partitions, or how they are scheduled, rather than what a partition
holds (not in code versions)."""


class ExperimentConfig(_Section):
    experiment: ExperimentSection
    model: ModelSection
    prompts: PromptsSection = PromptsSection()
    baselines: BaselinesSection = BaselinesSection()
    activations: ActivationsSection
    corpus: CorpusSection = CorpusSection()
    sae: SaeSection = SaeSection()
    sae_variants: dict[str, dict[str, Any]] = {}
    """An SAE sweep: named variants, each a set of ``sae.*`` overrides (``{}``: the sae section as
    written). With variants, ``saes`` has one partition per layer × variant and ``sae_selection``
    picks the one the phases after it read; without, one SAE per layer."""
    sae_selection: SaeSelectionSection = SaeSelectionSection()
    """The rule ``sae_selection`` applies (only with ``sae_variants``)."""
    attribution: AttributionSection = AttributionSection()
    interventions: InterventionsSection = InterventionsSection()
    dashboards: DashboardsSection = DashboardsSection()
    automation: AutomationSection = AutomationSection()
    tracking: TrackingSection = TrackingSection()
    storage: StorageSection
    """(Filled in before validation when absent: the default root, prefix experiment.name.)"""

    source_path: str | None = Field(default=None, exclude=True)
    """Where this config was read from (not part of any hash)."""
    _sae_variant: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _storage_prefix_defaults_to_name(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        storage = data.get("storage", {})
        if not isinstance(storage, dict) or "prefix" in storage:
            return data
        experiment = data.get("experiment")
        name = experiment.get("name") if isinstance(experiment, dict) else None
        # An unsafe or missing name is reported on experiment.name alone, not again as a prefix.
        prefix = name if isinstance(name, str) and SAFE_NAME.match(name) else "unnamed"
        return {**data, "storage": {**storage, "prefix": prefix}}

    @model_validator(mode="before")
    @classmethod
    def _moved_from_sae(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sae"), dict) and "ce_eval_texts" in data["sae"]:
            raise ValueError("sae.ce_eval_texts has moved: the held-out budget is corpus.eval_tokens")
        return data

    @model_validator(mode="after")
    def _real_text_for_a_real_model(self) -> ExperimentConfig:
        if (self.model.source == "pretrained" and self.corpus.source == "generated"
                and not self.corpus.allow_generated_with_pretrained):
            raise ValueError(
                "corpus.source: generated is the tiny model's template sentences (about 100k tokens of "
                f"them); SAEs of the pretrained {self.model.name} need real text: set corpus.source "
                "(text, jsonl, parquet or dataset) and corpus.path (README: Preparing a corpus), or "
                "corpus.allow_generated_with_pretrained: true for a plumbing check"
            )
        return self

    @model_validator(mode="after")
    def _key_layers_captured(self) -> ExperimentConfig:
        missing = sorted(set(self.attribution.key_layers) - set(self.activations.layers))
        if missing:
            raise ValueError(
                f"attribution.key_layers {missing} are not in activations.layers "
                f"{list(self.activations.layers)}: add them there or drop them here"
            )
        missing = sorted(set(self.interventions.patching_layers or ()) - set(self.activations.layers))
        if missing:
            raise ValueError(
                f"interventions.patching_layers {missing} are not in activations.layers "
                f"{list(self.activations.layers)}: patching needs each layer's SAE; add them there or drop them here"
            )
        return self

    @field_validator("sae_variants", mode="before")
    @classmethod
    def _variants_are_mappings(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("give a mapping of variant names to sae.* overrides, or {} (no sweep)")
        if isinstance(value, dict):
            odd = [name for name, overrides in value.items() if not isinstance(overrides, dict)]
            if odd:
                raise ValueError(f"variant(s) {odd} are not mappings: a variant is a mapping of sae.* fields to "
                                 "their values, {} for the sae section as written")
        return value

    @model_validator(mode="after")
    def _variants_override_sae_fields(self) -> ExperimentConfig:
        problems = []
        known = list(SaeSection.model_fields)
        for name, overrides in self.sae_variants.items():
            where = f"sae_variants.{name}"
            if not SAFE_NAME.match(name):
                problems.append(f"{where}: {name!r} is not a variant name: give lowercase letters, digits and "
                                "'_', starting with a letter (it names partitions and folders)")
                continue
            for field, reason in VARIANT_FIXED_FIELDS.items():
                if field in overrides:
                    problems.append(f"{where}.{field}: one setting for every variant ({reason}): set it in sae.* "
                                    "and drop it here")
            try:
                SaeSection.model_validate({**self.sae.model_dump(), **overrides})
            except ValidationError as error:
                for item in error.errors():
                    field = ".".join(str(part) for part in item["loc"])
                    if item["type"] == "extra_forbidden":
                        close = difflib.get_close_matches(field, known, n=1)
                        hint = f" (did you mean {close[0]!r}?)" if close else ""
                        problems.append(f"{where}.{field}: unknown key: a variant overrides fields of sae{hint}")
                    else:
                        message = item["msg"].removeprefix("Value error, ")
                        problems.append(f"{where}{'.' + field if field else ''}: {message}")
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def section_hash(self, *sections: str) -> str:
        """sha256 (16 hex) of the named sections: the config part of an asset's code version.

        ``activations.layers`` is left out: it decides WHICH layer partitions exist, not what any
        one of them contains, so adding a layer adds a (missing) partition and leaves the
        existing layers fresh."""
        payload = {
            name: section.model_dump(mode="json", exclude=_PARTITION_SELECTING_FIELDS.get(name))
            if isinstance(section := getattr(self, name), BaseModel) else section
            for name in sections
        }
        if "model" in payload and payload["model"].get("random") is None:
            # model.random came later: a study without it keeps the code versions it had.
            payload["model"].pop("random", None)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    @property
    def name(self) -> str:
        return self.experiment.name

    def asset_key(self, asset: str) -> Any:  # noqa: ANN401 - dagster.AssetKey (Dagster stays out of the config's imports)
        """An asset's key in this experiment's namespace: ``<experiment.name>/<asset>``."""
        import dagster as dg

        return dg.AssetKey([self.experiment.name, asset])

    def pool(self, asset: str) -> str:
        """The concurrency pool of one asset of this experiment: two runs never write the same
        asset at once, while other assets and other experiments run beside them."""
        return f"{self.experiment.name}.{asset}"

    @property
    def layer_keys(self) -> list[str]:
        return [str(layer) for layer in self.activations.layers]

    # ---- SAE sweeps -----------------------------------------------------------------------------

    @property
    def sae_variant(self) -> str | None:
        """The variant this config trains (``for_variant``); None for the study's own config."""
        return self._sae_variant

    def for_variant(self, variant: str | None) -> ExperimentConfig:
        """This config with ``sae`` replaced by one variant's settings: what that variant's training
        reads, and where its SAEs are kept (``artifacts.saes_relpath``). None: this config."""
        if variant is None:
            return self
        if variant not in self.sae_variants:
            raise ConfigError(f"sae variant {variant!r} is not in sae_variants {list(self.sae_variants)}")
        config = self.model_copy(update={"sae": SaeSection.model_validate(
            {**self.sae.model_dump(), **self.sae_variants[variant]})})
        config._sae_variant = variant
        return config

    @property
    def sae_partition_keys(self) -> list[str]:
        """The ``saes`` partitions: one per layer, or in a sweep one per layer × variant
        (``<layer>:<variant>``), a variant's layers together, so that a variant's layers, and the
        whole sweep, are each one range (one backfill run)."""
        if not self.sae_variants:
            return self.layer_keys
        return [sae_key(layer, variant) for variant in self.sae_variants for layer in self.activations.layers]

    def sae_task_groups(self, keys: list[str]) -> list[list[str]]:
        """How a run's ``saes`` partitions split into independent units (a worker pass, or one SLURM
        array task each): per variant, ``sae.layer_groups`` of its layers."""
        by_variant: dict[str | None, list[str]] = {}
        for key in keys:
            by_variant.setdefault(split_sae_key(key)[1], []).append(key)
        return [group for variant_keys in by_variant.values() for group in self.sae.layer_groups(variant_keys)]

    def to_payload(self) -> dict[str, Any]:
        """The whole config as plain JSON, handed to workers so they never re-read a changed file."""
        return self.model_dump(mode="json")


def sae_key(layer: int, variant: str | None) -> str:
    """The ``saes`` partition key of one layer (of one variant, in a sweep)."""
    return str(layer) if variant is None else f"{layer}:{variant}"


def split_sae_key(key: str) -> tuple[int, str | None]:
    """(layer, variant or None) of a ``saes`` partition key."""
    layer, _, variant = str(key).partition(":")
    return int(layer), variant or None


# Loading lives in its own module (config_loading.py); imported here, after the schema it builds,
# so that ``from interp_assets.config import load_config`` keeps working everywhere.
from interp_assets.config_loading import (  # noqa: E402, F401
    check_against_model,
    check_corpus,
    corpus_identity,
    corpus_spec,
    load_config,
    model_num_layers,
    parse_config,
)
