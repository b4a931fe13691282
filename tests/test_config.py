"""The experiment config: presets load, bad input fails at load with the field named, and each
section hashes on its own (the basis of per-asset staleness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import DATA, PROJECT_ROOT, deep_update, save_text_dataset, tiny_config_dict, write_config

from interp_assets.config import ConfigError, load_config, parse_config


def _qwen_model_dir(tmp_path: Path) -> Path:
    """A folder holding Qwen2.5-3B-Instruct's real config.json (weights are not needed to validate)."""
    model_dir = tmp_path / "Qwen2.5-3B-Instruct"
    model_dir.mkdir()
    shutil.copy(DATA / "qwen2.5-3b-instruct.config.json", model_dir / "config.json")
    return model_dir


def test_tiny_preset_loads_with_layers_and_paths_resolved() -> None:
    config = load_config(PROJECT_ROOT / "configs" / "experiments" / "tiny.yaml")
    assert config.model.source == "tiny"
    assert config.layer_keys == ["1", "2", "3", "4"]
    assert config.activations.hook_point == "mlp_post"
    assert Path(config.storage.root).is_absolute()
    # The lab's artifacts are apart from the Dagster instance (dagster_home/), in the experiment's folder.
    assert config.storage.root == str((PROJECT_ROOT / "studies").resolve())
    assert config.storage.location == str((PROJECT_ROOT / "studies" / "tiny").resolve())


@pytest.mark.parametrize("preset", ["qwen2.5-3b.yaml", "qwen3-4b.yaml"])
def test_pretrained_presets_fail_clearly_without_the_model_on_disk(preset: str) -> None:
    with pytest.raises(ConfigError, match=r"model\.path: .* has no config\.json .*huggingface-cli download"):
        load_config(PROJECT_ROOT / "configs" / preset)


def test_qwen_preset_validates_layers_against_the_real_model_config(tmp_path: Path) -> None:
    model_dir = _qwen_model_dir(tmp_path)
    data = yaml.safe_load((PROJECT_ROOT / "configs" / "qwen2.5-3b.yaml").read_text())
    data["model"]["path"] = str(model_dir)
    data["corpus"]["path"] = str(save_text_dataset(tmp_path / "corpus", ["Some real text.", "More of it."]))
    path = tmp_path / "qwen.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    config = load_config(path)
    assert config.activations.layers == tuple(range(10, 25))
    assert config.activations.dtype == "bfloat16"
    assert config.attribution.key_layers == (15, 18, 21)

    data["activations"]["layers"] = "30-36"  # the model has 36 layers: 0..35
    data["attribution"]["key_layers"] = [31]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"activations\.layers: \[36\] out of range; .* has 36 layers \(0\.\.35\)"):
        load_config(path)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"activations": {"hook_point": "mlp_act"}}, r"activations\.hook_point: unknown hook point 'mlp_act'; choose from \['mlp_out', 'mlp_post', 'resid_post'\]"),
        ({"activations": {"layerz": [1]}}, r"activations\.layerz: unknown key"),
        ({"sae": {"l1_coeficient": 3}}, r"sae\.l1_coeficient: unknown key"),
        ({"activations": {"layers": "5-2"}}, r"activations\.layers: layers '5-2': the range is empty"),
        ({"activations": {"layers": "ten"}}, r"activations\.layers: layers 'ten': write an inclusive range"),
        ({"activations": {"layers": [1, 1]}}, r"activations\.layers: a layer is listed twice"),
        ({"prompts": {"behaviours": ["ioi", "sarcasm"]}}, r"prompts\.behaviours: unknown behaviour\(s\) \['sarcasm'\]"),
        ({"sae": {"batch_size": -4}}, r"sae\.batch_size: Input should be greater than or equal to 1"),
        ({"attribution": {"key_layers": [2, 5]}}, r"attribution\.key_layers \[5\] are not in activations\.layers"),
        ({"interventions": {"patching_layers": [2, 9]}}, r"interventions\.patching_layers \[9\] are not in activations\.layers"),
        ({"model": {"source": "pretrained", "tiny": None}}, r"model: .*source: pretrained needs path"),
        ({"experiment": {"name": "../escape"}}, r"experiment\.name: '\.\./escape' is not a safe identifier: .* "
                                               r"lowercase letters, digits and underscores.*\(e\.g\. 'escape'\)"),
        ({"experiment": {"name": "Tiny-IOI"}}, r"experiment\.name: 'Tiny-IOI' is not a safe identifier.*'tiny_ioi'"),
        ({"experiment": {"name": None}}, r"experiment\.name: Input should be a valid string"),
        ({"storage": {"prefix": "../other_study"}}, r"storage\.prefix: '\.\./other_study' is not a relative folder"),
        ({"storage": {"prefix": None}}, r"storage\.prefix: Input should be a valid string"),
        ({"tracking": {"mlflow_uri": "https://ana:hunter2@mlflow.lab:5000"}},
         r"tracking\.mlflow_uri: holds a user name or password: .* MLFLOW_TRACKING_PASSWORD"),
        ({"tracking": {"mlflow_uri": "mlflow.lab:5000"}}, r"tracking\.mlflow_uri: 'mlflow\.lab:5000' is not an MLflow "
                                                          r"server address: give http\(s\)://host:port"),
        ({"tracking": {"mlflow_url": "http://x"}}, r"tracking\.mlflow_url: unknown key"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, updates: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, updates))


def test_out_of_range_layer_for_the_tiny_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"activations\.layers: \[6, 7\] out of range; .* has 6 layers"):
        load_config(write_config(tmp_path, {"activations": {"layers": "4-7"}, "attribution": {"key_layers": [4]}}))


def test_missing_file_and_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    broken.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(broken)


def test_section_hashes_change_only_for_the_edited_section() -> None:
    base = parse_config(tiny_config_dict())
    edited = parse_config(deep_update(tiny_config_dict(), {"sae": {"l1_coefficient": 2.5}}))
    assert base.section_hash("sae") != edited.section_hash("sae")
    for section in ("model", "prompts", "activations", "baselines", "attribution"):
        assert base.section_hash(section) == edited.section_hash(section)


def test_payload_round_trips() -> None:
    config = parse_config(tiny_config_dict())
    assert parse_config(config.to_payload()) == config


def test_a_password_in_the_tracking_uri_is_refused_without_being_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, {"tracking": {"mlflow_uri": "http://ana:hunter2@127.0.0.1:5000"}}))
    assert "tracking.mlflow_uri" in str(raised.value) and "hunter2" not in str(raised.value)
