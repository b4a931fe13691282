"""``open_study``: a study's artifacts read back through the config loader, the storage resource
and the layout's path functions. Fast checks on artifacts written here with the real store at
the layout's paths; tests/test_pipeline.py runs examples/study.ipynb on a materialized study."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from helpers import write_config

import interp_assets
from interp_assets.artifacts import prompts_relpath, saes_relpath
from interp_assets.config import load_config
from interp_assets.core.sae import SaeSpec, SparseAutoencoder, save_sae
from interp_assets.study import NotMaterialized, Study
from resources.storage import open_store


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def test_a_path_or_a_loaded_config_opens_the_same_study(config_path: Path) -> None:
    by_path = interp_assets.open_study(config_path)
    by_config = interp_assets.open_study(load_config(config_path))
    assert isinstance(by_path, Study)
    assert by_path.config == by_config.config
    assert by_path.behaviours == ("ioi", "capitals") and by_path.layers == (1, 2, 3, 4)
    assert "tiny" in repr(by_path)


def test_it_is_read_only(config_path: Path) -> None:
    public = [name for name in dir(Study) if not name.startswith("_")]
    assert not [name for name in public if any(verb in name for verb in ("write", "put", "delete", "save"))]


def test_missing_artifacts_name_the_partition_to_materialize(config_path: Path) -> None:
    study = interp_assets.open_study(config_path)
    with pytest.raises(NotMaterialized, match=r"materialize baselines \[ioi\] first"):
        study.baselines("ioi")
    with pytest.raises(NotMaterialized, match=r"materialize saes \[2\] first"):
        study.sae(2)
    with pytest.raises(NotMaterialized, match=r"materialize attribution_graphs \[capitals\] first"):
        study.graph("capitals")
    with pytest.raises(KeyError, match=r"prompts.behaviours"):
        study.prompts("greetings")
    with pytest.raises(KeyError, match=r"activations.layers"):
        study.sae_metrics(9)


def test_tables_and_saes_come_back_as_written(config_path: Path, tmp_path: Path) -> None:
    config = load_config(config_path)
    store = open_store(config.storage)
    for behaviour in ("ioi", "capitals"):
        store.write_parquet(prompts_relpath(behaviour), pl.DataFrame({"id": [f"{behaviour}-0"], "clean": ["x"]}))
    sae = SparseAutoencoder(SaeSpec(d_in=8, d_sae=32))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_()
    folder = tmp_path / "sae"
    save_sae(sae, folder)
    history = [{"step": 10, "metrics/l0": 3.0}, {"step": 20, "metrics/l0": 2.5}]
    (folder / "training.json").write_text(json.dumps({"summary": {"explained_variance": 0.9}, "history": history}))
    store.put_dir(saes_relpath(config, 3), folder)

    study = interp_assets.open_study(config_path)
    assert study.prompts()["id"].to_list() == ["ioi-0", "capitals-0"]  # every behaviour, in config order
    assert study.prompts("capitals").height == 1
    loaded = study.sae(3)
    assert isinstance(loaded, SparseAutoencoder)  # SAELens is not installed here
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert study.sae_metrics(3) == {"explained_variance": 0.9}
    assert study.sae_curve(3)["metrics/l0"].to_list() == [3.0, 2.5]
    assert study.sae_dir(3) == Path(store.url(saes_relpath(config, 3)))


def test_dashboards_are_optional(config_path: Path) -> None:
    study = interp_assets.open_study(config_path)
    if study.has_dashboards:
        with pytest.raises(NotMaterialized, match="feature_dashboards"):
            study.dashboards(1)
    else:
        with pytest.raises(NotMaterialized, match="no feature_dashboards asset"):
            study.dashboards(1)
