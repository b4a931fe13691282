"""The rehearsal's path at Qwen2.5-3B's widths, CI-sized: ``model.source: random`` builds a Qwen2
with the real hidden / MLP / head shapes (2 layers, a 1,024-row vocabulary instead of 36 and
151,936), deterministically from its seed, through the real worker tasks; the plan is computed
for it; and one capture pass stores ``mlp_post`` vectors 11,008 wide. A width-dependent bug (a
hard-coded dimension, a BF16 cast that breaks at these shapes) fails here, not on the cluster."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT_ROOT, deep_update

from interp_assets.config import ConfigError, load_config, parse_config
from interp_assets.plan import model_shape, plan_for

REHEARSAL = PROJECT_ROOT / "configs" / "rehearsal-qwen2.5-3b.yaml"
CI_SIZE = {
    "model": {"random": {"num_layers": 2, "vocab_size": 1024}},
    "prompts": {"n_per_behaviour": 4},
    "activations": {"layers": "0-1", "batch_size": 4, "shard_max_vectors": 64},
    "corpus": {"seq_len": 12, "max_tokens": 48, "eval_tokens": 24},
    "attribution": {"key_layers": [0, 1]},
    "interventions": {"patching_layers": [0, 1]},
    # 11008 → 11008: the SAE at the real input width, its expansion cut (a 44,032-wide SAE in
    # training is 15.5 GB, the rehearsal's own job in benchmarks/).
    "sae": {"expansion_factor": 1, "batch_size": 16, "steps": 2},
}


def _config(tmp_path: Path) -> Path:
    data = deep_update(yaml.safe_load(REHEARSAL.read_text()), {**CI_SIZE, "storage": {"root": str(tmp_path), "prefix": "storage"}})
    path = tmp_path / "rehearsal-ci.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _worker(task: str, config: Path, *partitions: str) -> dict:
    args = [sys.executable, "-m", "interp_assets.worker", task, "--config", str(config)]
    for key in partitions:
        args += ["--partition", key]
    done = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_rehearsal_config_is_qwen2_5_3b_s_architecture() -> None:
    config = load_config(REHEARSAL)
    hf = json.loads((PROJECT_ROOT / "tests" / "data" / "qwen2.5-3b-instruct.config.json").read_text())
    section = config.model.random
    assert (section.hidden_size, section.intermediate_size, section.num_layers, section.num_heads,
            section.num_kv_heads, section.vocab_size, section.tie_word_embeddings) == (
        hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"], hf["num_attention_heads"],
        hf["num_key_value_heads"], hf["vocab_size"], hf["tie_word_embeddings"])
    assert config.model.dtype == "bfloat16" and config.activations.layers == tuple(range(10, 25))


def test_a_random_model_needs_its_architecture_and_no_path() -> None:
    base = yaml.safe_load(REHEARSAL.read_text())
    without = deep_update(base, {})
    del without["model"]["random"]
    with pytest.raises(ConfigError, match=r"source: random needs a random: section"):
        parse_config(without)
    with pytest.raises(ConfigError, match=r"path is only for source: pretrained"):
        parse_config(deep_update(base, {"model": {"path": "/models/x"}}))
    with pytest.raises(ConfigError, match=r"model.random.num_kv_heads|num_heads 16 must be divisible by num_kv_heads 3"):
        parse_config(deep_update(base, {"model": {"random": {"num_kv_heads": 3}}}))


def test_every_phase_at_the_real_widths(tmp_path: Path) -> None:
    config_path = _config(tmp_path)
    config = load_config(config_path)
    shape = model_shape(config)
    assert (shape.hidden, shape.intermediate, shape.layers, shape.vocab) == (2048, 11008, 2, 1024)
    plan = plan_for(config, "cpu")
    assert plan.phase("saes").jobs == 2 and plan.sae.d_sae == 11008  # expansion cut to 1 here

    built = _worker("language_model", config_path)
    model_dir = Path(built["metadata"]["path"])
    hf = json.loads((model_dir / "config.json").read_text())
    assert (hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"], hf["vocab_size"]) == (2048, 11008, 2, 1024)
    assert hf["tie_word_embeddings"] is True and hf["dtype"] == "bfloat16"
    # Deterministic from the seed: a second build in another storage root has the same bytes.
    other = tmp_path / "other"
    other.mkdir()
    rebuilt = _worker("language_model", _config(other))
    digest = lambda p: hashlib.sha256((Path(p) / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(model_dir) == digest(rebuilt["metadata"]["path"])

    from interp_assets.artifacts import prompts_relpath
    from interp_assets.assets.prompts import prompts_table
    from resources.storage import open_store

    store = open_store(config.storage)
    for behaviour in config.prompts.behaviours:  # the prompts asset's own table, written as it writes it
        store.write_parquet(prompts_relpath(behaviour), prompts_table(config, behaviour))
    captured = _worker("activations", config_path, "0", "1")
    assert captured["metadata"]
    import safetensors.torch
    import torch

    for layer_dir in sorted((tmp_path / "storage" / "activations" / "mlp_post").iterdir()):
        manifest = json.loads((layer_dir / "manifest.json").read_text())
        assert manifest["width"] == 11008 and manifest["dtype"] == "bfloat16"
        # every prompt's last 5 positions (4 per behaviour, clean + corrupted), and corpus vectors
        assert manifest["sources"]["prompts"]["n_vectors"] == 2 * 2 * 4 * 5
        for source in manifest["sources"].values():
            for shard in source["shards"]:
                vectors = safetensors.torch.load_file(layer_dir / shard["file"])["activations"]
                assert vectors.shape == (shard["n_vectors"], 11008) and vectors.dtype == torch.bfloat16
                assert bool(torch.isfinite(vectors.float()).all()) and float(vectors.float().abs().max()) > 0

    # The phases after capture, each as its SLURM job runs it: widths 2048 / 11008, BF16 weights.
    for behaviour in config.prompts.behaviours:
        _worker("baselines", config_path, behaviour)
    _worker("saes", config_path, "0", "1")
    for layer in (0, 1):
        weights = safetensors.torch.load_file(tmp_path / "storage" / "saes" / "mlp_post" / f"layer_{layer:03d}"
                                              / "sae_weights.safetensors")
        assert weights["W_enc"].shape == (11008, 11008) and weights["W_dec"].shape == (11008, 11008)
    _worker("feature_dashboards", config_path, "0", "1")
    import polars as pl

    latents = pl.read_parquet(tmp_path / "storage" / "dashboards" / "mlp_post" / "layer_001" / "latents.parquet")
    assert latents.height == 11008
    # dashboards.logit_latents (1,024 in the rehearsal): token tables for the busiest latents only
    with_tables = latents.filter(pl.col("promoted_tokens").list.len() == 10)
    assert with_tables.height == 1024 and latents.filter(pl.col("promoted_tokens").list.len() == 0).height == 11008 - 1024
    assert with_tables["n_firing"].min() >= latents.filter(pl.col("promoted_tokens").list.len() == 0)["n_firing"].max()
    for behaviour in config.prompts.behaviours:
        graph = _worker("attribution_graphs", config_path, behaviour)["metadata"]
        assert graph["n_nodes"] > 0
        document = json.loads((tmp_path / "storage" / "attribution" / "mlp_post" / behaviour / "graph.json").read_text())
        assert {node["feature_type"] for node in document["nodes"]} >= {"embedding", "logit"}
        interventions = _worker("interventions", config_path, behaviour)["metadata"]
        assert interventions["n_experiments"] > 0
