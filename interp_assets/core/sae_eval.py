"""Downstream SAE metric: CE-loss recovered when the SAE's reconstruction is spliced into the model.

recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean), where CE_zero zero-ablates the hook point
(SAELens's ``ce_loss_score``): 1 means the SAE loses nothing the model uses, 0 means it is as
bad as deleting the activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp_assets.core.hooks import hooked
from interp_assets.core.modeling import tokenize_batches
from interp_assets.core.sae import SparseAutoencoder


@torch.no_grad()
def _mean_ce(model, tokenizer, texts: Sequence[str], batch_size: int, max_tokens: int) -> float:  # noqa: ANN001
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in tokenize_batches(tokenizer, texts, batch_size, device, max_tokens):
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        count += int((labels[:, 1:] != -100).sum())
    return total / max(count, 1)


def ce_loss_recovered(
    model,  # noqa: ANN001
    tokenizer,  # noqa: ANN001
    texts: Sequence[str],
    layer: int,
    hook_point: str,
    sae: SparseAutoencoder,
    batch_size: int = 32,
    max_tokens: int = 64,
) -> dict[str, float]:
    def splice(_: int, activation: torch.Tensor) -> torch.Tensor:
        return sae(activation.float()).x_hat.to(activation.dtype)

    clean = _mean_ce(model, tokenizer, texts, batch_size, max_tokens)
    with hooked(model, [layer], hook_point, splice):
        with_sae = _mean_ce(model, tokenizer, texts, batch_size, max_tokens)
    with hooked(model, [layer], hook_point, lambda _, activation: torch.zeros_like(activation)):
        zero = _mean_ce(model, tokenizer, texts, batch_size, max_tokens)
    denominator = zero - clean
    return {
        "ce_loss_clean": clean,
        "ce_loss_with_sae": with_sae,
        "ce_loss_zero_ablation": zero,
        "ce_loss_recovered": (zero - with_sae) / denominator if abs(denominator) > 1e-9 else float("nan"),
    }
