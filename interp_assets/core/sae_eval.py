"""Judging an SAE on held-out text, as the field reports it, beside what chance looks like.

Every figure here comes from the held-out windows of the corpus (documents the SAE never trained
on), at the positions the SAE was trained on (all but ``skip_first`` of each window):

- reconstruction: explained variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄ the held-out mean), the MSE
  per element and the same normalised by the activations' variance (MSE / Var, = 1 − EV);
- sparsity: L0 per token (mean, and a histogram), the fraction of latents that never fire on the
  held-out tokens (dead) and that fire on more than ``dense_threshold`` of them (dense);
- in the model: next-token cross-entropy with the layer clean, with the SAE's reconstruction
  spliced in, zero-ablated and mean-ablated (at the same positions), the KL divergence of each
  from the clean next-token distribution, and CE-loss recovered
  (CE_ablated − CE_sae) / (CE_ablated − CE_clean) for both ablations WITH its denominator: on a
  layer whose ablation costs almost nothing the ratio is noise, and the reader must see that.

Each SAE passed in (the trained one, and a random-weight one of the same shape as the baseline) is
judged on exactly the same tokens. Memory: one batch of activations and of full-vocabulary
log-probabilities (the batch is sized so the latter stay under ~1 GiB whatever the vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from interp_assets.core.hooks import forward_until_recorded, hooked, recording
from interp_assets.core.sae import SparseAutoencoder

L0_HISTOGRAM_BINS = 20
_LOGPROB_BYTES = 1 << 30


def _pad_id(model) -> int:  # noqa: ANN001
    config = model.config
    pad = getattr(config, "pad_token_id", None)
    pad = pad if pad is not None else getattr(config, "eos_token_id", None)
    return int(pad[0] if isinstance(pad, (list, tuple)) else (pad or 0))


def random_sae_like(sae: SparseAutoencoder, data_mean: torch.Tensor, seed: int) -> SparseAutoencoder:
    """The chance baseline: an SAE of the same shape and architecture, initialised as training
    starts (random unit-norm decoder rows, encoder its transpose, b_dec the data mean), untrained."""
    baseline = SparseAutoencoder(sae.spec, device=sae.W_dec.device)
    baseline.initialize(torch.Generator().manual_seed(seed), data_mean=data_mean.to(sae.W_dec.device))
    return baseline


def eval_batch_size(requested: int, seq_len: int, vocab_size: int) -> int:
    """Windows per evaluation batch: at most ``requested``, and few enough that one batch of
    full-vocabulary FP32 log-probabilities stays under ~1 GiB (13 windows of 128 at 151,936)."""
    return max(1, min(requested, _LOGPROB_BYTES // max(1, seq_len * vocab_size * 4)))


def _batches(windows: torch.Tensor, batch_size: int, device: torch.device, pad_token_id: int):  # noqa: ANN202
    """(input_ids, attention_mask) batches; a ``document`` window's padding (negative ids) is fed
    as the pad token and masked (right padding: no real token ever attends to it)."""
    for start in range(0, windows.shape[0], batch_size):
        rows = windows[start : start + batch_size].to(device=device, dtype=torch.long)
        mask = rows >= 0
        yield rows.masked_fill(~mask, pad_token_id), mask


@torch.no_grad()
def held_out_activations(model, windows: torch.Tensor, layer: int, hook_point: str, *, batch_size: int,  # noqa: ANN001
                         skip_first: int, dtype: torch.dtype, limit: int | None = None) -> torch.Tensor:
    """The layer's activations at the kept positions of ``windows`` ([n, d] in ``dtype``, window
    order), stopping once ``limit`` vectors are gathered."""
    device = next(model.parameters()).device
    parts, count = [], 0
    with recording(model, [layer], hook_point, stop_after_deepest=True) as records:
        for input_ids, mask in _batches(windows, batch_size, device, _pad_id(model)):
            forward_until_recorded(model, input_ids=input_ids, attention_mask=mask.long(), use_cache=False)
            rows = records[layer][:, skip_first:][mask[:, skip_first:]].to(dtype).cpu()
            parts.append(rows)
            count += rows.shape[0]
            if limit is not None and count >= limit:
                break
    vectors = torch.cat(parts)
    return vectors[:limit] if limit is not None else vectors


@torch.no_grad()
def evaluate_held_out(
    model,  # noqa: ANN001
    windows: torch.Tensor,
    layer: int,
    hook_point: str,
    saes: Mapping[str, SparseAutoencoder],
    *,
    batch_size: int,
    skip_first: int,
    activation_dtype: torch.dtype,
    dense_threshold: float,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Judge each SAE of ``saes`` on the held-out ``windows`` ([n, seq_len] token ids).

    Returns ``{"shared": {...}, "<name>": {...} for each SAE}``: the clean and ablated CE and KL
    with the token counts in ``shared``, the SAE's own figures under its name. The SAE sees the
    activations rounded to ``activation_dtype``, as in training."""
    device = next(model.parameters()).device
    n_windows, seq_len = windows.shape
    batch_size = eval_batch_size(batch_size, seq_len, model.config.vocab_size)
    names = list(saes)

    # Pass 1: the held-out mean activation (mean ablation, explained variance's x̄).
    total, count = None, 0
    pad_id = _pad_id(model)
    with recording(model, [layer], hook_point, stop_after_deepest=True) as records:
        for input_ids, mask in _batches(windows, batch_size, device, pad_id):
            forward_until_recorded(model, input_ids=input_ids, attention_mask=mask.long(), use_cache=False)
            rows = records[layer][:, skip_first:][mask[:, skip_first:]].to(activation_dtype).double()
            total = rows.sum(dim=0) if total is None else total + rows.sum(dim=0)
            count += rows.shape[0]
    mean = (total / count).float()

    stats: dict[str, dict[str, Any]] = {
        name: {"sse": 0.0, "l0_sum": 0.0, "l0": [], "fired": None, "ce": 0.0, "kl": 0.0} for name in names
    }
    ablations = {"zero_ablation": {"ce": 0.0, "kl": 0.0}, "mean_ablation": {"ce": 0.0, "kl": 0.0}}
    sst, ce_clean, n_tokens, n_predictions = 0.0, 0.0, 0, 0

    def run(input_ids: torch.Tensor, mask: torch.Tensor,
            replace: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        def splice(_: int, activation: torch.Tensor) -> torch.Tensor:
            out = activation.clone()
            out[:, skip_first:] = replace(activation[:, skip_first:]).to(activation.dtype)
            return out

        with hooked(model, [layer], hook_point, splice):
            return model(input_ids=input_ids, attention_mask=mask.long(), use_cache=False).logits.float()

    def next_token_terms(logits: torch.Tensor, input_ids: torch.Tensor, valid: torch.Tensor,
                         clean_logp: torch.Tensor) -> tuple[float, float]:
        # Predictions made at the positions the SAE acts on, of the (real) token after each.
        logp = F.log_softmax(logits[:, skip_first:-1], dim=-1)
        targets = input_ids[:, skip_first + 1 :]
        ce = -(logp.gather(-1, targets[..., None])[..., 0] * valid).sum()
        kl = ((clean_logp.exp() * (clean_logp - logp)).sum(dim=-1) * valid).sum()
        return float(ce), float(kl)

    def reconstruct(sae: SparseAutoencoder) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda activation: sae(activation.to(activation_dtype).float()).x_hat

    done = 0
    for input_ids, mask in _batches(windows, batch_size, device, pad_id):
        with recording(model, [layer], hook_point) as records:
            clean_logits = model(input_ids=input_ids, attention_mask=mask.long(), use_cache=False).logits.float()
        x = records[layer][:, skip_first:][mask[:, skip_first:]].to(activation_dtype).float()  # [tokens, d_in]
        clean_logp = F.log_softmax(clean_logits[:, skip_first:-1], dim=-1)
        del clean_logits
        targets = input_ids[:, skip_first + 1 :]
        valid = mask[:, skip_first + 1 :].float()  # right padding: a real next token has a real one before it
        ce_clean += float(-(clean_logp.gather(-1, targets[..., None])[..., 0] * valid).sum())
        n_predictions += int(valid.sum())
        n_tokens += x.shape[0]
        sst += float(((x - mean) ** 2).sum())
        for name, sae in saes.items():
            out = sae(x)
            record = stats[name]
            record["sse"] += float(((x - out.x_hat) ** 2).sum())
            active = out.feature_acts > 0
            per_token = active.sum(dim=-1)
            record["l0_sum"] += float(per_token.sum())
            record["l0"].append(per_token.cpu())
            fired = active.sum(dim=0)
            record["fired"] = fired if record["fired"] is None else record["fired"] + fired
        for name, sae in saes.items():
            ce, kl = next_token_terms(run(input_ids, mask, reconstruct(sae)), input_ids, valid, clean_logp)
            stats[name]["ce"] += ce
            stats[name]["kl"] += kl
        for name, replace in (("zero_ablation", torch.zeros_like),
                              ("mean_ablation", lambda a: mean.to(a.dtype).expand_as(a))):
            ce, kl = next_token_terms(run(input_ids, mask, replace), input_ids, valid, clean_logp)
            ablations[name]["ce"] += ce
            ablations[name]["kl"] += kl
        done += input_ids.shape[0]
        log(f"held-out eval: {done}/{n_windows} windows")

    clean = ce_clean / n_predictions
    shared = {
        "n_eval_windows": int(n_windows),
        "n_eval_tokens": int(n_tokens),
        "n_eval_predictions": int(n_predictions),
        "ce_loss_clean": clean,
        **{f"ce_loss_{name}": values["ce"] / n_predictions for name, values in ablations.items()},
        **{f"kl_{name}": values["kl"] / n_predictions for name, values in ablations.items()},
    }
    shared["ce_denominator_zero_ablation"] = shared["ce_loss_zero_ablation"] - clean
    shared["ce_denominator_mean_ablation"] = shared["ce_loss_mean_ablation"] - clean
    result: dict[str, Any] = {"shared": shared}
    d_in = next(iter(saes.values())).spec.d_in
    for name in names:
        record = stats[name]
        l0 = torch.cat(record["l0"]).float()
        ce_sae = record["ce"] / n_predictions
        max_l0 = max(1, int(l0.max()))
        edges = torch.linspace(0, max_l0, L0_HISTOGRAM_BINS + 1)
        counts = torch.histc(l0, bins=L0_HISTOGRAM_BINS, min=0, max=max_l0)
        fired = record["fired"].float() / n_tokens
        result[name] = {
            "explained_variance": 1.0 - record["sse"] / sst if sst > 0 else None,
            "mse": record["sse"] / (n_tokens * d_in),
            "mse_normalised": record["sse"] / sst if sst > 0 else None,
            "l0": float(record["l0_sum"] / n_tokens),
            "l0_histogram": {"edges": [round(float(e), 3) for e in edges], "counts": [int(c) for c in counts]},
            "dead_fraction": float((fired == 0).float().mean()),
            "dense_fraction": float((fired > dense_threshold).float().mean()),
            "ce_loss_with_sae": ce_sae,
            "kl_with_sae": record["kl"] / n_predictions,
            "ce_loss_recovered": _recovered(shared["ce_loss_zero_ablation"], ce_sae, clean),
            "ce_loss_recovered_mean_ablation": _recovered(shared["ce_loss_mean_ablation"], ce_sae, clean),
        }
    return result


def _recovered(ablated: float, with_sae: float, clean: float) -> float | None:
    denominator = ablated - clean
    return (ablated - with_sae) / denominator if abs(denominator) > 1e-12 else None

