"""A study's results in a notebook: ``open_study(config)`` and read, never write.

    import interp_assets
    study = interp_assets.open_study("configs/experiments/tiny.yaml")
    study.baselines("ioi")                  # polars DataFrame
    study.sae(3)                            # SAELens ``SAE`` when sae_lens is installed, else ours
    study.sae(3, variant="topk_k16")        # a sweep's other variants (study.sae(3): the chosen one)
    study.sae_selection(3)["candidates"]    # a sweep's choice for the layer, every variant's figures
    study.graph("ioi").nodes                # the attribution graph: JSON dict + nodes/edges frames

Everything comes through what the pipeline itself uses: the config is read and checked by
``config.load_config``, the storage root (a folder, an fsspec URL, tiers) is opened by
``resources.storage.open_store``, and every folder's path comes from ``interp_assets.artifacts``,
so a notebook reads exactly what the assets wrote, wherever the config puts it. A remote root is
downloaded once per object version into the store's cache. Nothing here imports Dagster or writes
to the storage root.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from interp_assets import artifacts
from interp_assets.config import ExperimentConfig, load_config
from interp_assets.tasks.common import sae_in_use_relpath
from resources.storage import ArtifactStore, open_store


class NotMaterialized(FileNotFoundError):
    """The artifact asked for has not been written yet (its asset partition was never materialized)."""


@dataclass(frozen=True)
class AttributionGraphFiles:
    """One behaviour's attribution graph as written by ``attribution_graphs``."""

    json: dict[str, Any]
    """circuit-tracer / Neuronpedia graph JSON: ``metadata, qParams, nodes, links``."""
    nodes: pl.DataFrame
    edges: pl.DataFrame
    summary: dict[str, Any]
    png_path: Path
    """The picture shown in the UI (a local path: downloaded first when the root is remote)."""


@dataclass(frozen=True)
class Dashboards:
    """One layer's feature dashboards (``feature_dashboards``): every table and JSON document of
    its folder, by file name without the suffix."""

    tables: dict[str, pl.DataFrame]
    documents: dict[str, Any]


class Study:
    """Read-only access to one experiment's artifacts. Each call reads the current bytes (a
    rematerialization shows at the next call); frames are fresh polars frames of the stored
    Parquet, SAEs are loaded on the CPU unless ``device`` says otherwise."""

    def __init__(self, config: ExperimentConfig, store: ArtifactStore) -> None:
        self.config = config
        self._store = store

    def __repr__(self) -> str:
        return (f"Study({self.config.experiment.name!r}, model={self.config.model.name!r}, "
                f"behaviours={list(self.behaviours)}, layers={list(self.layers)}, root={self.config.storage.location!r})")

    # ---- what the study has ------------------------------------------------------------
    @property
    def behaviours(self) -> tuple[str, ...]:
        return tuple(self.config.prompts.behaviours)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.config.activations.layers)

    def _require(self, relpath: str, asset: str, partition: str | int | None, folder: bool = False) -> str:
        present = self._store.is_complete_dir(relpath) if folder else self._store.exists(relpath)
        if not present:
            which = f"{asset} [{partition}]" if partition is not None else asset
            raise NotMaterialized(f"{self._store.url(relpath)} does not exist: materialize {which} first "
                                  f"(experiment {self.config.experiment.name!r})")
        return relpath

    def _behaviour(self, behaviour: str) -> str:
        if behaviour not in self.behaviours:
            raise KeyError(f"behaviour {behaviour!r} is not in this study's prompts.behaviours {list(self.behaviours)}")
        return behaviour

    def _layer(self, layer: int | str) -> int:
        if int(layer) not in self.layers:
            raise KeyError(f"layer {layer!r} is not in this study's activations.layers {list(self.layers)}")
        return int(layer)

    def _table(self, relpath: str, asset: str, partition: str | int | None) -> pl.DataFrame:
        return self._store.read_parquet(self._require(relpath, asset, partition))

    def _per_behaviour(self, read: Any, behaviour: str | None) -> pl.DataFrame:
        if behaviour is not None:
            return read(self._behaviour(behaviour))
        return pl.concat([read(name) for name in self.behaviours], how="diagonal_relaxed")

    # ---- tables ------------------------------------------------------------------------
    def prompts(self, behaviour: str | None = None) -> pl.DataFrame:
        """Clean/corrupted prompt pairs (every behaviour's, stacked, when none is named)."""
        return self._per_behaviour(lambda b: self._table(artifacts.prompts_relpath(b), "prompts", b), behaviour)

    def baselines(self, behaviour: str | None = None) -> pl.DataFrame:
        """Per prompt: logit difference, p(target), correct; clean and corrupted."""
        return self._per_behaviour(lambda b: self._table(artifacts.baselines_relpath(b), "baselines", b), behaviour)

    def interventions(self, behaviour: str | None = None) -> pl.DataFrame:
        """One row per experiment (ablation, patching, resampling) with its recovery and CI."""
        return self._per_behaviour(
            lambda b: self._table(f"{artifacts.interventions_relpath(self.config, b)}/experiments.parquet",
                                  "interventions", b).with_columns(pl.lit(b).alias("behaviour")),
            behaviour)

    def faithfulness(self, behaviour: str) -> pl.DataFrame:
        """Faithfulness of the top-n circuits and of their complements, against n."""
        return self._table(f"{artifacts.interventions_relpath(self.config, self._behaviour(behaviour))}/"
                           "faithfulness.parquet", "interventions", behaviour)

    # ---- SAEs --------------------------------------------------------------------------
    def _sae_relpath(self, layer: int | str, variant: str | None) -> str:
        layer = self._layer(layer)
        if variant is not None:
            if variant not in self.config.sae_variants:
                raise KeyError(f"{variant!r} is not a variant of {self.config.name}: {list(self.config.sae_variants)}")
            return self._require(artifacts.saes_relpath(self.config.for_variant(variant), layer), "saes",
                                 f"{layer}:{variant}", folder=True)
        if self.config.sae_variants:
            self._require(artifacts.sae_selection_relpath(self.config, layer), "sae_selection", layer)
            return self._require(sae_in_use_relpath(self.config, self._store, layer), "saes", layer, folder=True)
        return self._require(artifacts.saes_relpath(self.config, layer), "saes", layer, folder=True)

    def sae_dir(self, layer: int | str, variant: str | None = None) -> Path:
        """The layer's SAE folder on local disk (SAELens layout: cfg.json + sae_weights.safetensors).
        In a sweep: the variant ``sae_selection`` chose, or the ``variant`` named."""
        return self._store.local_dir(self._sae_relpath(layer, variant))

    def sae_selection(self, layer: int | str) -> dict[str, Any]:
        """A sweep's choice for the layer: ``variant``, the ``rule``, and every variant's figures
        (``candidates``: L0, the rule's metric and a random SAE's, on the Pareto front or not)."""
        return self._store.read_json(self._require(artifacts.sae_selection_relpath(self.config, self._layer(layer)),
                                                   "sae_selection", layer))

    def sae(self, layer: int | str, device: str = "cpu", variant: str | None = None) -> Any:
        """The layer's SAE (in a sweep: the chosen one, or ``variant``): a ``sae_lens.SAE`` when
        SAELens is installed, else ``interp_assets.core.sae.SparseAutoencoder`` (same weights,
        same encode/decode)."""
        folder = self.sae_dir(layer, variant)
        if importlib.util.find_spec("sae_lens") is not None:
            from sae_lens import SAE

            return SAE.load_from_disk(str(folder), device=device)
        from interp_assets.core.sae import load_sae

        return load_sae(folder, device=device)

    def sae_training(self, layer: int | str, variant: str | None = None) -> dict[str, Any]:
        """The training record: ``config`` (sae.*), ``summary`` (held-out R², L0, dead fraction, CE
        loss recovered, ...), ``history`` (the curve) and the data ``fingerprint``."""
        return self._store.read_json(f"{self._sae_relpath(layer, variant)}/training.json")

    def sae_metrics(self, layer: int | str, variant: str | None = None) -> dict[str, Any]:
        """The layer's SAE metrics as the materialization reported them."""
        return dict(self.sae_training(layer, variant)["summary"])

    def sae_curve(self, layer: int | str, variant: str | None = None) -> pl.DataFrame:
        """The training curve: one row per log interval (loss terms, R², L0, dead fraction, lr)."""
        return pl.DataFrame(self.sae_training(layer, variant)["history"])

    # ---- graphs ------------------------------------------------------------------------
    def graph(self, behaviour: str) -> AttributionGraphFiles:
        folder = self._require(artifacts.attribution_relpath(self.config, self._behaviour(behaviour)),
                               "attribution_graphs", behaviour, folder=True)
        return AttributionGraphFiles(
            json=self._store.read_json(f"{folder}/graph.json"),
            nodes=self._store.read_parquet(f"{folder}/nodes.parquet"),
            edges=self._store.read_parquet(f"{folder}/edges.parquet"),
            summary=self._store.read_json(f"{folder}/summary.json"),
            png_path=self._store.local_file(f"{folder}/graph.png"),
        )

    # ---- dashboards --------------------------------------------------------------------
    @property
    def has_dashboards(self) -> bool:
        """Whether this version of the pipeline has the ``feature_dashboards`` asset at all."""
        return hasattr(artifacts, "dashboards_relpath")

    def dashboards(self, layer: int | str) -> Dashboards:
        if not self.has_dashboards:
            raise NotMaterialized("this version of interp_assets has no feature_dashboards asset")
        relpath = self._require(artifacts.dashboards_relpath(self.config, self._layer(layer)), "feature_dashboards", layer)
        names = sorted(self._store.list(relpath))
        return Dashboards(
            tables={Path(n).stem: self._store.read_parquet(f"{relpath}/{n}") for n in names if n.endswith(".parquet")},
            documents={Path(n).stem: self._store.read_json(f"{relpath}/{n}") for n in names if n.endswith(".json")},
        )


def open_study(config: str | Path | ExperimentConfig | None = None) -> Study:
    """Open a study for reading: ``config`` is a config file (``None``: $INTERP_ASSETS_CONFIG or
    configs/experiments/tiny.yaml, as the code location does) or an already loaded ``ExperimentConfig``."""
    loaded = config if isinstance(config, ExperimentConfig) else load_config(config)
    return Study(loaded, open_store(loaded.storage))
