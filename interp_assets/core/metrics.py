"""Behaviour metrics: logit difference target − foil, p(target), correctness."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from interp_assets.core.modeling import answer_token_id, tokenize_batches


@dataclass
class PromptScores:
    """Per-prompt scores at the last prompt position, all of shape [n_prompts]."""

    logit_diff: torch.Tensor
    """logit(target) − logit(foil), first token of each answer."""
    p_target: torch.Tensor
    """softmax probability of the target's first token."""
    correct: torch.Tensor
    """target preferred over foil (logit_diff > 0)."""


@torch.no_grad()
def score_prompts(
    model,  # noqa: ANN001
    tokenizer,  # noqa: ANN001
    texts: Sequence[str],
    targets: Sequence[str],
    foils: Sequence[str],
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> PromptScores:
    device = next(model.parameters()).device
    target_ids = torch.tensor([answer_token_id(tokenizer, t) for t in targets], device=device)
    foil_ids = torch.tensor([answer_token_id(tokenizer, f) for f in foils], device=device)
    if bool((target_ids == foil_ids).any()):
        raise ValueError("a target and its foil share their first token: the logit difference would be 0")
    logit_diffs, p_targets = [], []
    for batch in tokenize_batches(tokenizer, texts, batch_size, device):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, T, V]
        last = logits[torch.arange(len(batch.rows), device=device), batch.lengths - 1].float()  # [B, V]
        rows = torch.tensor(list(batch.rows), device=device)
        target_logit = last.gather(1, target_ids[rows, None]).squeeze(1)
        foil_logit = last.gather(1, foil_ids[rows, None]).squeeze(1)
        logit_diffs.append(target_logit - foil_logit)
        p_targets.append(last.softmax(dim=-1).gather(1, target_ids[rows, None]).squeeze(1))
        if progress is not None:
            progress(batch.rows.stop, len(texts))
    logit_diff = torch.cat(logit_diffs).cpu()
    return PromptScores(logit_diff=logit_diff, p_target=torch.cat(p_targets).cpu(), correct=logit_diff > 0)
