"""The storage layout: the relative path of every artifact and checkpoint under the storage root,
and the seeds derived per behaviour. The only place a path is spelled; ``resources.storage`` maps
these paths onto a root (a folder, an fsspec URL, or the tier that holds their top folder).

  models/tiny-<spec hash>/               the tiny model (config.json, model.safetensors, tokenizer)
  models/random-<spec hash>/             a random-weight model of a real architecture (source: random)
  models/<model name>/card.json          a pretrained model's fingerprint
  prompts/<behaviour>.parquet            Phase 0
  baselines/<behaviour>.parquet (+.png)  Phase 1
  activations/<hook>/layer_<L>/          Phase 2: <source>-<i>.safetensors shards + manifest.json
  saes/<hook>/layer_<L>/                 Phase 3: cfg.json + sae_weights.safetensors (SAELens) +
                                         training.json + training_curve.png
  saes/<hook>/<variant>/layer_<L>/       Phase 3 of an SAE sweep (sae_variants): the same, per variant
  sae_selection/<hook>/layer_<L>.json    Phase 3 of a sweep: the variant chosen for the layer, and why
  dashboards/<hook>/layer_<L>/           Phase 3b: latents.parquet, contexts.parquet, features.json
                                         (SAEDashboard / Neuronpedia batch format), summary.json
  attribution/<hook>/<behaviour>/        Phase 4: nodes.parquet, edges.parquet, graph.json (circuit-
                                         tracer / Neuronpedia schema), graph.png, summary.json
  interventions/<hook>/<behaviour>/      Phase 5: experiments.parquet, faithfulness.parquet (+.png)
  checkpoints/activations/<hook>/capture-<layers>.json  Phase 2: capture progress (deleted when done)
  checkpoints/saes/<hook>/[<variant>/]layer_<L>/  Phase 3: the latest training checkpoint (deleted when done)
  checkpoints/interventions/<hook>/<behaviour>/  Phase 5: finished experiments so far (parts)
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from interp_assets.config import ExperimentConfig

ARTIFACT_FOLDERS = ("models", "prompts", "baselines", "activations", "saes", "sae_selection", "dashboards",
                    "attribution", "interventions", "checkpoints")
"""The top-level folders of the layout: what a storage tier (``storage.tiers``) can hold."""


def tiny_model_relpath(config: ExperimentConfig) -> str:
    """The folder of a model the project builds itself: the tiny one, or a random-weight one
    (``source: random``; its dtype is part of the hash, since the weights are saved in it)."""
    if config.model.source == "random":
        payload = {**config.model.random.model_dump(mode="json"), "dtype": config.model.dtype}
        spec = json.dumps(payload, sort_keys=True)
        return f"models/random-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
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


def _sae_folder(config: ExperimentConfig, layer: int) -> str:
    variant = config.sae_variant  # a sweep's variant (config.for_variant) has a folder of its own
    return f"{config.activations.hook_point}/{variant + '/' if variant else ''}layer_{layer:03d}"


def saes_relpath(config: ExperimentConfig, layer: int) -> str:
    return f"saes/{_sae_folder(config, layer)}"


def sae_checkpoint_relpath(config: ExperimentConfig, layer: int) -> str:
    # Outside the SAE folder, which is replaced as a whole when training finishes.
    return f"checkpoints/saes/{_sae_folder(config, layer)}/checkpoint.pt"


def sae_selection_relpath(config: ExperimentConfig, layer: int) -> str:
    return f"sae_selection/{config.activations.hook_point}/layer_{layer:03d}.json"


def dashboards_relpath(config: ExperimentConfig, layer: int) -> str:
    return f"dashboards/{config.activations.hook_point}/layer_{layer:03d}"


def attribution_relpath(config: ExperimentConfig, behaviour: str) -> str:
    return f"attribution/{config.activations.hook_point}/{behaviour}"


def interventions_relpath(config: ExperimentConfig, behaviour: str) -> str:
    return f"interventions/{config.activations.hook_point}/{behaviour}"


def interventions_checkpoint_relpath(config: ExperimentConfig, behaviour: str) -> str:
    return f"checkpoints/interventions/{config.activations.hook_point}/{behaviour}"


def behaviour_seed(seed: int, behaviour: str) -> int:
    """A per-behaviour seed that does not depend on which other behaviours are configured."""
    return (seed * 1_000_003 + zlib.crc32(behaviour.encode())) % (2**31)
