"""SAE core: the on-disk format, fast paths against references, the data stream, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interp_assets.core.sae import SaeSpec, SparseAutoencoder, explained_variance, load_sae, save_sae
from interp_assets.core.sae_data import ShardedActivations, ShuffledBatches
from interp_assets.config import SaeSection
from interp_assets.core.sae_training import TrainerConfig, train_sae


def _sparse_data(n: int, d_in: int = 16, n_features: int = 48, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Vectors that really are sparse sums of a dictionary: an SAE can explain them."""
    generator = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_features, d_in, generator=generator)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, n_features)
    index = torch.stack([torch.randperm(n_features, generator=generator)[:active] for _ in range(n)])
    codes.scatter_(1, index, torch.rand(n, active, generator=generator) * 2 + 0.5)
    return (codes @ dictionary + 0.3).to(torch.bfloat16)


def _write_shards(directory: Path, data: torch.Tensor, per_shard: int) -> list[Path]:
    paths = []
    for i, start in enumerate(range(0, data.shape[0], per_shard)):
        path = directory / f"corpus-{i:05d}.safetensors"
        save_file({"activations": data[start : start + per_shard].contiguous()}, path)
        paths.append(path)
    return paths


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    return _write_shards(tmp_path, _sparse_data(6000), per_shard=1000)


SMALL = SaeSection(
    batch_size=64, steps=120, lr=3e-3, lr_warmup_steps=10, lr_decay_steps=30, l1_coefficient=0.05,
    l1_warmup_steps=20, checkpoint_every=40, log_every=20, expansion_factor=4, k=4, dead_window_steps=200,
).trainer_config()


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_save_load_round_trip_matches_saelens_layout(tmp_path: Path, architecture: str) -> None:
    spec = SaeSpec(d_in=16, d_sae=64, architecture=architecture, k=4 if architecture == "topk" else None,
                   metadata={"model_name": "m", "hook_name": "blocks.2.mlp.hook_post", "context_size": 32})
    sae = SparseAutoencoder(spec)
    sae.initialize(torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.normal_()
    save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    with safe_open(tmp_path / "sae" / "sae_weights.safetensors", framework="pt") as handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    assert shapes == {"W_enc": (16, 64), "W_dec": (64, 16), "b_enc": (64,), "b_dec": (16,)}
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == architecture and cfg["d_in"] == 16 and cfg["d_sae"] == 64
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True
    assert {"model_name", "hook_name", "context_size", "prepend_bos", "sae_lens_version"} <= set(cfg["metadata"])
    assert ("k" in cfg) == (architecture == "topk")
    loaded = load_sae(tmp_path / "sae")
    x = torch.randn(10, 16)
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))


def test_topk_sparse_decode_matches_dense_decode_with_gradients() -> None:
    sae = SparseAutoencoder(SaeSpec(d_in=16, d_sae=64, architecture="topk", k=5))
    sae.initialize(torch.Generator().manual_seed(0))
    x = torch.randn(8, 16)
    values, indices = sae.encode_sparse(x)
    fast = sae.decode_sparse(values, indices)
    dense_codes = sae.encode(x)
    assert ((dense_codes > 0).sum(dim=1) <= 5).all()
    reference = dense_codes @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(fast, reference)
    grad_fast = torch.autograd.grad(fast.square().sum(), sae.W_dec)[0]
    grad_reference = torch.autograd.grad(
        (sae.encode(x) @ sae.W_dec + sae.b_dec).square().sum(), sae.W_dec
    )[0]
    torch.testing.assert_close(grad_fast, grad_reference)


def test_stream_resumes_exactly_and_re_epochs(shards: list[Path]) -> None:
    data = ShardedActivations(shards, held_out=500)
    assert data.n_vectors == 5500 and data.d_in == 16
    batches = ShuffledBatches(data, batch_size=64, seed=3, chunk_vectors=1024, block_vectors=256)
    stream = batches.iterate()
    first = [next(stream) for _ in range(200)]  # 12800 vectors > 5500: wraps into epoch 2 and 3
    assert first[-1][1].epoch == 2
    # Resume from a position in the middle: identical batches from there on.
    batch_99, position_99 = first[99]
    resumed = batches.iterate(position_99)
    for i in range(100, 130):
        batch, position = next(resumed)
        assert torch.equal(batch, first[i][0]) and position == first[i][1]
    # One epoch visits every training vector exactly once, never the held-out ones.
    rows = torch.cat([b for b, _ in first])[: data.n_vectors].float()
    train_rows = data.head(data.n_vectors).float()
    assert torch.equal(rows.sum(dim=0), train_rows.sum(dim=0)) or torch.allclose(rows.sum(0), train_rows.sum(0))
    assert rows.shape[0] == train_rows.shape[0]


def test_standard_sae_learns_sparse_structure(shards: list[Path]) -> None:
    data = ShardedActivations(shards, held_out=500)
    config = TrainerConfig(**{**SMALL.__dict__, "steps": 600, "lr_decay_steps": 100, "l1_coefficient": 0.5})
    result = train_sae(ShuffledBatches(data, 64, seed=0), config, data_fingerprint="synthetic",
                       eval_vectors=data.held_out_vectors())
    final = result.history[-1]
    assert final["eval/explained_variance"] > 0.9, final
    assert final["metrics/l0"] < 16, final  # sparse: well under d_in
    x = data.held_out_vectors().float()
    assert explained_variance(x, result.sae(x).x_hat.detach()) == pytest.approx(final["eval/explained_variance"])


def test_topk_keeps_k_active_and_unit_norm_decoder(shards: list[Path]) -> None:
    data = ShardedActivations(shards, held_out=500)
    config = TrainerConfig(**{**SMALL.__dict__, "architecture": "topk", "steps": 300})
    result = train_sae(ShuffledBatches(data, 64, seed=0), config, data_fingerprint="synthetic",
                       eval_vectors=data.held_out_vectors())
    assert result.history[-1]["metrics/l0"] <= 4
    torch.testing.assert_close(result.sae.W_dec.norm(dim=1), torch.ones(64), rtol=1e-5, atol=1e-5)
    assert result.history[-1]["eval/explained_variance"] > 0.7


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_resume_after_interruption_is_bit_identical(shards: list[Path], architecture: str) -> None:
    data = ShardedActivations(shards, held_out=500)
    config = TrainerConfig(**{**SMALL.__dict__, "architecture": architecture})
    uninterrupted = train_sae(ShuffledBatches(data, 64, seed=0), config, data_fingerprint="d")

    saved: list[bytes] = []

    def save_then_die(blob: bytes) -> None:
        saved.append(blob)
        if len(saved) == 2:  # dies right after the step-80 checkpoint landed
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_sae(ShuffledBatches(data, 64, seed=0), config, data_fingerprint="d", save_checkpoint=save_then_die)
    messages: list[str] = []
    resumed = train_sae(ShuffledBatches(data, 64, seed=0), config, data_fingerprint="d",
                        load_checkpoint=lambda: saved[-1], log=messages.append)
    assert resumed.resumed_from_step == 80
    assert any("resumed from the checkpoint at step 80" in m for m in messages)
    for name, tensor in uninterrupted.sae.state_dict().items():
        assert torch.equal(tensor, resumed.sae.state_dict()[name]), name
    assert [h["losses/overall"] for h in resumed.history] == [h["losses/overall"] for h in uninterrupted.history]


def test_corrupted_or_foreign_checkpoints_restart_cleanly_with_a_warning(shards: list[Path]) -> None:
    data = ShardedActivations(shards, held_out=500)
    config = TrainerConfig(**{**SMALL.__dict__, "steps": 40, "checkpoint_every": 20})
    reference = train_sae(ShuffledBatches(data, 64, seed=0), config, data_fingerprint="d")
    saved: list[bytes] = []
    train_sae(ShuffledBatches(data, 64, seed=0), config, data_fingerprint="d", save_checkpoint=saved.append)
    for blob, warning in [
        (saved[0][: len(saved[0]) // 2], "unreadable"),  # a torn file
        (saved[0], "another config or data"),  # same bytes, but loaded by a run on other data
    ]:
        messages: list[str] = []
        fingerprint = "d" if warning == "unreadable" else "other-data"
        result = train_sae(ShuffledBatches(data, 64, seed=0), config, data_fingerprint=fingerprint,
                           load_checkpoint=lambda blob=blob: blob, log=messages.append)
        assert result.resumed_from_step == 0
        assert any(m.startswith("WARNING") and warning in m for m in messages), messages
        if fingerprint == "d":
            for name, tensor in reference.sae.state_dict().items():
                assert torch.equal(tensor, result.sae.state_dict()[name])
