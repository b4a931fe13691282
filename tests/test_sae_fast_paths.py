"""The SAE step's fast paths against the naive maths they replace, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from interp_assets.config import SaeSection
from interp_assets.core.sae import SaeSpec, SparseAutoencoder, decoder_norm_weighted_l1
from interp_assets.core.sae_training import (
    TrainerConfig,
    _losses,
    _remove_parallel_gradient,
    _standard_step_gradients,
)


@pytest.fixture(autouse=True)
def reproducibility() -> None:
    torch.manual_seed(0)


def test_decoder_norm_weighted_l1_matches_autograd() -> None:
    acts = torch.relu(torch.randn(8, 12, dtype=torch.float64)).requires_grad_()
    W_dec = torch.randn(12, 5, dtype=torch.float64)
    W_dec[3] = 0.0  # a zero row: autograd's norm backward gives it a zero gradient
    W_dec.requires_grad_()
    naive = (acts * W_dec.norm(dim=1)).sum(dim=-1).mean()
    fast = decoder_norm_weighted_l1(acts, W_dec)
    torch.testing.assert_close(fast, naive)
    for got, want in zip(torch.autograd.grad(fast, [acts, W_dec]), torch.autograd.grad(naive, [acts, W_dec]),
                         strict=True):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(decoder_norm_weighted_l1, (acts, torch.randn(12, 5, dtype=torch.float64,
                                                                                   requires_grad=True)))


def test_pre_acts_fold_b_dec_into_the_bias() -> None:
    sae = SparseAutoencoder(SaeSpec(d_in=6, d_sae=16)).double()
    sae.initialize(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(5, 6, dtype=torch.float64)
    naive = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(sae.pre_acts(x), naive)
    got = torch.autograd.grad(sae.pre_acts(x).pow(2).sum(), [sae.W_enc, sae.b_enc, sae.b_dec])
    want = torch.autograd.grad(naive.pow(2).sum(), [sae.W_enc, sae.b_enc, sae.b_dec])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def _naive_topk_loss(sae: SparseAutoencoder, x: torch.Tensor, config: TrainerConfig, dead: torch.Tensor) -> torch.Tensor:
    """The TopK + AuxK loss with a fixed-size dead selection (the GPU path), written out densely."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, indices = pre.topk(sae.spec.k or 0, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    error = x - (acts @ sae.W_dec + sae.b_dec)
    mse = error.pow(2).sum(dim=-1).mean()
    if not dead.any():
        return mse
    k_aux = x.shape[-1] // 2
    aux_values, aux_indices = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1)
    aux_values = torch.where(torch.isfinite(aux_values), torch.relu(aux_values), 0.0)
    aux_acts = torch.zeros_like(pre).scatter(-1, aux_indices, aux_values)
    total_var = (error - error.mean(dim=0)).pow(2).sum(dim=-1).mean()
    aux = (aux_acts @ sae.W_dec - error.detach()).pow(2).sum(dim=-1).mean() / total_var.detach()
    return mse + config.aux_k_coefficient * aux


@pytest.mark.parametrize("n_dead", [0, 3, 40])
def test_topk_loss_with_few_or_no_dead_latents_matches_the_full_selection(n_dead: int) -> None:
    # On CPU the AuxK selection is cut to the number of dead latents (and skipped at zero).
    sae = SparseAutoencoder(SaeSpec(d_in=16, d_sae=64, architecture="topk", k=4)).double()
    sae.initialize(torch.Generator().manual_seed(0))
    config = SaeSection(architecture="topk", k=4, dead_window_steps=200).trainer_config()
    x = torch.randn(10, 16, dtype=torch.float64)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64)[:n_dead]] = True
    loss, _, _ = _losses(sae, x, config, 0.0, dead)
    naive = _naive_topk_loss(sae, x, config, dead)
    torch.testing.assert_close(loss, naive)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(naive, params), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reuse_buffers", [False, True])
def test_standard_step_gradients_match_autograd(reuse_buffers: bool) -> None:
    # The ReLU step's hand-written gradients (the trainer's path) against autograd on _losses.
    sae = SparseAutoencoder(SaeSpec(d_in=12, d_sae=48)).double()
    sae.initialize(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
        sae.W_dec[5] = 0.0  # a zero decoder row
        sae.W_dec[7] *= 3.0
    config = SaeSection(architecture="relu", dead_window_steps=200).trainer_config()
    x = torch.randn(9, 12, dtype=torch.float64)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    loss, want_terms, want_fired = _losses(sae, x, config, 2.5, torch.zeros(48, dtype=torch.bool))
    want = torch.autograd.grad(loss, params)
    if reuse_buffers:  # stale values in kept .grad buffers must be overwritten, not added to
        for param in params:
            param.grad = torch.full_like(param, 7.0)
    terms, fired = _standard_step_gradients(sae, x, 2.5)
    for got, expected in zip([p.grad for p in params], want, strict=True):
        torch.testing.assert_close(got, expected)
    for name, value in want_terms.items():
        torch.testing.assert_close(terms[name], value.detach(), msg=name)
    assert torch.equal(fired, want_fired)


def test_remove_parallel_gradient_leaves_the_part_orthogonal_to_each_decoder_row() -> None:
    sae = SparseAutoencoder(SaeSpec(d_in=7, d_sae=20, architecture="topk", k=3)).double()
    sae.initialize(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(20, 1, dtype=torch.float64) + 0.5)  # rows not unit norm
    grad = torch.randn(20, 7, dtype=torch.float64)
    sae.W_dec.grad = grad.clone()
    _remove_parallel_gradient(sae)
    rows = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    torch.testing.assert_close(sae.W_dec.grad, grad - (grad * rows).sum(dim=1, keepdim=True) * rows)
