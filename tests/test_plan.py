"""The resource plan: computed from the config and the model's own config.json (never Qwen's
dimensions written in code), printed by ``python -m interp_assets.plan``, with clear errors for
an unknown device, a model that cannot be read and a safety factor below 1; and a SLURM profile's
``time: auto`` / ``mem: auto`` rendered into the sbatch script as the plan's figure × the factor."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import DATA, PROJECT_ROOT, TINY_CONFIG, asset_key, in_experiment, save_text_dataset, write_config

from interp_assets.config import load_config
from interp_assets.core.resource_model import DEVICES, GIB, ModelShape, SaeShape
from interp_assets.plan import PHASES, PlanError, markdown, model_shape, plan_for, task_requirements
from resources.slurm import SlurmCompute, SlurmConfigError
from resources.slurm.script import batch_script, sbatch_argv


def _qwen_config(tmp_path: Path, preset: str = "qwen2.5-3b.yaml") -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    shutil.copy(DATA / "qwen2.5-3b-instruct.config.json", model_dir / "config.json")
    data = yaml.safe_load((PROJECT_ROOT / "configs" / preset).read_text())
    data["model"]["path"] = str(model_dir)
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        save_text_dataset(corpus, ["Some real text.", "More of it."])
    data["corpus"]["path"] = str(corpus)
    path = tmp_path / preset
    path.write_text(yaml.safe_dump(data))
    return path


def test_shapes_come_from_the_model_s_config_json(tmp_path: Path) -> None:
    config = load_config(_qwen_config(tmp_path))
    shape = model_shape(config)
    hf = json.loads((DATA / "qwen2.5-3b-instruct.config.json").read_text())
    assert (shape.hidden, shape.intermediate, shape.layers, shape.vocab, shape.tied) == (
        hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"], hf["vocab_size"], hf["tie_word_embeddings"])
    # Qwen2.5-3B's published size: 3.09 B parameters (tied embeddings counted once).
    assert 3.0e9 < shape.params() < 3.2e9
    # The rehearsal's random model has the very same architecture.
    rehearsal = load_config(PROJECT_ROOT / "configs" / "rehearsal-qwen2.5-3b.yaml")
    assert model_shape(rehearsal) == shape


def test_sae_arithmetic_matches_the_issue_s_figures() -> None:
    sae = SaeShape(d_in=11008, d_sae=44032, batch=256, steps=50_000, topk=False)
    assert sae.weight_bytes() / 1e9 == pytest.approx(3.9, abs=0.05)  # "~3.9 GB of FP32 weights each"
    assert 16 * sae.params() / 1e9 == pytest.approx(15.5, abs=0.1)  # "15.5 GB with gradients and Adam"
    assert sae.step_flops() == 12 * 256 * 11008 * 44032


def test_the_plan_scales_with_the_shapes() -> None:
    small = ModelShape(64, 256, 6, 4, 2, 768, True, 4)
    wide = ModelShape(128, 512, 6, 4, 2, 768, True, 4)
    assert wide.forward_flops(100, 16) > 3 * small.forward_flops(100, 16)
    assert wide.params() > 3 * small.params()


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_every_phase_is_planned_on_every_device(tmp_path: Path, device: str) -> None:
    config = load_config(_qwen_config(tmp_path))
    plan = plan_for(config, device)
    assert [p.phase for p in plan.phases] == list(PHASES)
    for phase in plan.phases:
        assert phase.seconds > 0 and phase.host_peak_bytes > 0, phase
    saes = plan.phase("saes")
    # streamed, sae.stream_layers_per_task (3) layers of 10-24 per array task
    assert saes.jobs == len(config.sae.layer_groups(list(config.activations.layers))) == 5
    # weights + gradients + Adam of three 11008 → 44032 SAEs, on the device
    assert saes.device_peak_bytes > 3 * 15.5e9
    text = markdown(plan)
    assert "ASSUMED" in text and "220 GPU-hours" in text or device == "cpu"
    if device == "cpu":
        assert "MEASURED" in text


def test_prompt_length_is_that_of_the_config_s_own_prompts(tiny_model_storage: Path) -> None:
    """The plan's prompt length (the longest prompt's words and punctuation marks) against the
    tiny model's real tokenizer on the same prompts: BPE keeps these common words whole."""
    from tokenizers import Tokenizer

    from interp_assets.artifacts import tiny_model_relpath
    from interp_assets.assets.prompts import prompts_table
    from interp_assets.plan import prompt_tokens_estimate

    config = load_config(TINY_CONFIG)
    tokenizer = Tokenizer.from_file(str(tiny_model_storage / tiny_model_relpath(config) / "tokenizer.json"))
    longest = max(len(tokenizer.encode(text).ids) for behaviour in config.prompts.behaviours
                  for column in ("clean", "corrupted") for text in prompts_table(config, behaviour)[column])
    assert prompt_tokens_estimate(config) == longest


def test_dashboards_are_planned_per_layer_and_logit_latents_cut_their_tables(tmp_path: Path) -> None:
    config = load_config(_qwen_config(tmp_path))
    full = plan_for(config, "h100").phase("feature_dashboards")
    assert full.jobs == len(config.activations.layers) == 15
    # 44,032 latents × (11008·2048 + 2048·151936) multiply-adds: the 27 TFLOP of the README
    assert full.fp32_flops == pytest.approx(44032 * 2 * (11008 * 2048 + 2048 * 151936))
    data = yaml.safe_load(_qwen_config(tmp_path).read_text())
    data["dashboards"] = {"logit_latents": 1024}
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(data))
    cut = plan_for(load_config(tmp_path / "cut.yaml"), "h100").phase("feature_dashboards")
    assert cut.fp32_flops == pytest.approx(full.fp32_flops * 1024 / 44032)
    assert cut.seconds < full.seconds


def test_faster_devices_plan_less_time(tmp_path: Path) -> None:
    config = load_config(_qwen_config(tmp_path))
    hours = {name: plan_for(config, name).gpu_hours for name in ("a100-40gb", "a100-80gb", "h100", "h200")}
    assert hours["h200"] <= hours["h100"] < hours["a100-80gb"] <= hours["a100-40gb"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interp_assets.plan", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_command_prints_a_table_for_a_shipped_qwen_config(tmp_path: Path) -> None:
    done = _cli(str(_qwen_config(tmp_path)), "--device", "a100-80gb")
    assert done.returncode == 0, done.stderr
    assert "| saes | 5 |" in done.stdout and "GPU-hours" in done.stdout and "service units" in done.stdout


def test_an_unknown_device_lists_the_known_ones() -> None:
    done = _cli(str(TINY_CONFIG), "--device", "a100")
    assert done.returncode == 2
    assert "--device 'a100': unknown device; known devices: a100-40gb, a100-80gb, h100, h200, cpu" in done.stderr


def test_a_model_that_cannot_be_read_names_model_path(tmp_path: Path) -> None:
    config_path = _qwen_config(tmp_path)
    config = load_config(config_path)
    (tmp_path / "model" / "config.json").write_text("{not json")
    with pytest.raises(PlanError, match=r"^model\.path: cannot read the model config from .*model"):
        plan_for(config, "a100-80gb")
    (tmp_path / "model" / "config.json").unlink()
    done = _cli(str(config_path))
    assert done.returncode == 2 and "model.path:" in done.stderr, done.stderr


# ---- SLURM: time: auto / mem: auto -----------------------------------------------------------------

CLUSTER = {"workdir": "/rds/project/interp/checkout", "log_dir": "/rds/project/interp/slurm-logs"}


@pytest.mark.parametrize(("profile", "named"), [
    ({"auto_safety_factor": 0.9}, "SlurmCompute.auto_safety_factor: 0.9 is not allowed; expected a number ≥ 1"),
    ({"auto_device": "a100"}, "SlurmCompute.auto_device: 'a100' is not allowed; expected one of a100-40gb"),
    ({"overrides": {"saes": {"mem": "lots"}}}, "SlurmCompute.overrides.saes.mem: 'lots' is not allowed"),
])
def test_bad_auto_settings_name_the_field(tmp_path: Path, profile: dict, named: str) -> None:
    from resources.backend import load_slurm_profile

    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(SlurmConfigError) as caught:
        load_slurm_profile(path)
    assert named in str(caught.value) and str(path) in str(caught.value)


def test_auto_time_and_mem_render_the_plan_times_the_safety_factor() -> None:
    config = load_config(TINY_CONFIG)
    factor = 10.0
    compute = SlurmCompute(time="auto", mem="auto", auto_device="cpu", auto_safety_factor=factor, signal_seconds=0,
                           overrides={"baselines": {"time": "0:20:00", "mem": "3G"}}, **CLUSTER)
    compute.check_settings()
    seconds, host = task_requirements(config, "saes", "cpu")
    spec = compute.batch_spec("saes", "/rds/run/saes", [{"A": "0"}, {"A": "1"}], as_array=True, config=config)
    argv = sbatch_argv(spec, "0-1")
    minutes = math.ceil(seconds * factor / 60)
    assert minutes > 1  # the plan's figure, not the one-minute floor, decides here
    assert f"--time={minutes // 60}:{minutes % 60:02d}:00" in argv
    assert f"--mem={math.ceil(host * factor / GIB)}G" in argv
    assert "exec" in batch_script(spec)
    # An explicit value wins over auto.
    explicit = sbatch_argv(compute.batch_spec("baselines", "/rds/run/b", [{"A": "0"}], as_array=False, config=config), None)
    assert "--time=0:20:00" in explicit and "--mem=3G" in explicit


def test_auto_time_leaves_room_for_the_usr1_warning() -> None:
    config = load_config(TINY_CONFIG)
    compute = SlurmCompute(time="auto", auto_device="h200", signal_seconds=300, **CLUSTER)
    compute.check_settings()
    spec = compute.batch_spec("baselines", "/rds/run/b", [{"A": "0"}], as_array=False, config=config)
    assert spec.job["time"] == "0:07:00"  # tiny baselines take seconds: the floor is 300 + 90 s → 7 min


def test_auto_without_a_config_is_a_clear_error() -> None:
    compute = SlurmCompute(mem="auto", **CLUSTER)
    with pytest.raises(SlurmConfigError, match=r"SlurmCompute.mem: auto needs the experiment config"):
        compute.batch_spec("saes", "/rds/run/saes", [{"A": "0"}], as_array=False)


def test_the_asset_keeps_the_plan_in_metadata(tmp_path: Path) -> None:
    import dagster as dg

    from interp_assets.definitions import build_definitions

    defs = build_definitions(write_config(tmp_path))
    result = dg.materialize([defs.get_assets_def(asset_key("resource_plan"))], instance=dg.DagsterInstance.ephemeral())
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert "| saes | 4 |" in metadata["plan"].value
    assert set(metadata["figures"].value) == set(DEVICES)
