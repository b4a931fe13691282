"""How good is the linear estimate? Each feature node's attribution against the exact effect of
patching that one feature to its corrupted value, and how well the two rankings agree.
Plain PyTorch: no dagster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from interp_assets.core.attribution import Node, corrupted_activations
from interp_assets.core.hooks import hooked
from interp_assets.core.prompt_pairs import PromptPairs, logit_diff, run_logits
from interp_assets.core.sae import SparseAutoencoder

@torch.no_grad()
def exact_patch_effects(
    model,  # noqa: ANN001
    saes: Mapping[int, SparseAutoencoder],
    pairs: PromptPairs,
    nodes: Sequence[Node],
    hook_point: str,
    pad_token_id: int,
    batch_size: int = 32,
) -> list[float]:
    """For each feature node: mean over prompts of m(clean) − m(clean with that one feature set
    to its corrupted value at its position), the quantity its attribution estimates to first order."""
    device = next(model.parameters()).device
    layers = sorted(saes)
    effects = [0.0] * len(nodes)
    for batch in pairs.batches(batch_size, device, pad_token_id):
        corrupt, _ = corrupted_activations(model, batch, layers, hook_point)
        ld_clean = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
        rows = torch.arange(batch.size, device=device)
        for index, node in enumerate(nodes):
            if node.is_error:
                continue
            sae = saes[node.layer].to(device)
            positions = batch.position_of_offset(node.offset)
            present = positions >= 0
            r, p = rows[present], positions[present]
            f_corrupt = sae.encode(corrupt[node.layer][r, p])[:, node.feature]

            def patch(layer: int, activation: torch.Tensor, r=r, p=p, f_corrupt=f_corrupt, node=node, sae=sae) -> torch.Tensor:
                x = activation.float().clone()
                f_clean = sae.encode(x[r, p])[:, node.feature]
                x[r, p] += (f_corrupt - f_clean)[:, None] * sae.W_dec[node.feature]
                return x.to(activation.dtype)

            with hooked(model, [node.layer], hook_point, patch):
                ld = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
            effects[index] += float((ld_clean - ld).sum())
    return [effect / len(pairs) for effect in effects]


def rank_agreement(estimates: Sequence[float], exact: Sequence[float]) -> dict[str, float]:
    """Sign agreement and Spearman rank correlation between attributions and exact effects."""
    if not estimates:
        return {"n_nodes": 0, "sign_agreement": float("nan"), "spearman": float("nan")}
    est, ex = torch.tensor(list(estimates), dtype=torch.float64), torch.tensor(list(exact), dtype=torch.float64)
    sign = float((torch.sign(est) == torch.sign(ex)).double().mean())

    def ranks(values: torch.Tensor) -> torch.Tensor:
        return values.argsort().argsort().double()

    if len(est) < 2:
        return {"n_nodes": len(est), "sign_agreement": sign, "spearman": float("nan")}
    re_, rx = ranks(est), ranks(ex)
    re_, rx = re_ - re_.mean(), rx - rx.mean()
    spearman = float((re_ * rx).sum() / (re_.norm() * rx.norm()).clamp_min(1e-12))
    return {"n_nodes": len(est), "sign_agreement": sign, "spearman": spearman}


