"""Clean/corrupted prompt pairs as tensors, and the behaviour metric read off a forward pass.

Attribution and the intervention experiments compare a clean prompt with its corrupted twin
position by position, so a pair is usable only when both tokenize to the same length (always
true for the tiny model's vocabulary; with a real tokenizer a country name may split differently,
and such pairs are left out and counted). Positions are aligned from the END of each prompt
(offset −1 is the last token, where the answer is read), so prompts of different templates
share the offsets that matter most: the answer position and the tokens just before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from interp_assets.core.modeling import answer_token_id


@dataclass
class PairBatch:
    clean_ids: torch.Tensor
    """[B, T] right-padded token ids of the clean prompts."""
    corrupted_ids: torch.Tensor
    """[B, T] the corrupted prompts, same lengths as their clean twins."""
    attention_mask: torch.Tensor
    """[B, T] 1 on real tokens."""
    lengths: torch.Tensor
    """[B] real tokens per prompt."""
    target_ids: torch.Tensor
    """[B] first token of the right answer on the clean prompt."""
    foil_ids: torch.Tensor
    """[B] first token of the answer the corruption points to."""
    rows: list[int]
    """Indices of these pairs in the list they were made from."""

    @property
    def size(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.clean_ids.shape[1])

    def position_of_offset(self, offset: int) -> torch.Tensor:
        """[B] token index of ``offset`` (−1 = last token) in each prompt; −1 where it is absent."""
        positions = self.lengths + offset
        return torch.where(positions >= 0, positions, torch.full_like(positions, -1))

    def offsets(self) -> torch.Tensor:
        """[B, T] offset from the end of every position (padding gets a positive number)."""
        index = torch.arange(self.width, device=self.lengths.device)
        return index[None, :] - self.lengths[:, None]

    def repeat(self, times: int) -> PairBatch:
        """The batch stacked ``times`` times (row r of copy c is row c·B + r): many draws, one pass."""
        return PairBatch(
            self.clean_ids.repeat(times, 1),
            self.corrupted_ids.repeat(times, 1),
            self.attention_mask.repeat(times, 1),
            self.lengths.repeat(times),
            self.target_ids.repeat(times),
            self.foil_ids.repeat(times),
            self.rows * times,
        )

    def select(self, rows: Sequence[int]) -> PairBatch:
        """The sub-batch of the given row positions (within this batch)."""
        index = torch.as_tensor(list(rows), device=self.clean_ids.device, dtype=torch.long)
        width = int(self.lengths[index].max()) if len(index) else 0
        return PairBatch(
            self.clean_ids[index, :width],
            self.corrupted_ids[index, :width],
            self.attention_mask[index, :width],
            self.lengths[index],
            self.target_ids[index],
            self.foil_ids[index],
            [self.rows[int(r)] for r in index],
        )


@dataclass
class PromptPairs:
    """Tokenized pairs ready to batch, and the ones left out because their lengths differ."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    target_ids: list[int]
    foil_ids: list[int]
    rows: list[int]
    """Index of each kept pair in the caller's list."""
    n_unequal_length: int

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def max_length(self) -> int:
        return max((len(ids) for ids in self.clean), default=0)

    def batches(self, batch_size: int, device: torch.device | str, pad_token_id: int) -> Iterator[PairBatch]:
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield self.batch(range(start, stop), device, pad_token_id)

    def batch(self, indices: Sequence[int], device: torch.device | str, pad_token_id: int) -> PairBatch:
        indices = list(indices)
        width = max(len(self.clean[i]) for i in indices)
        clean = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
        corrupted = clean.clone()
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            n = len(self.clean[i])
            clean[row, :n] = torch.tensor(self.clean[i])
            corrupted[row, :n] = torch.tensor(self.corrupted[i])
            mask[row, :n] = 1
        return PairBatch(
            clean.to(device),
            corrupted.to(device),
            mask.to(device),
            mask.sum(dim=1).to(device),
            torch.tensor([self.target_ids[i] for i in indices], device=device),
            torch.tensor([self.foil_ids[i] for i in indices], device=device),
            [self.rows[i] for i in indices],
        )


def tokenize_pairs(
    tokenizer,  # noqa: ANN001
    clean: Sequence[str],
    corrupted: Sequence[str],
    targets: Sequence[str],
    foils: Sequence[str],
) -> PromptPairs:
    kept = PromptPairs([], [], [], [], [], 0)
    for row, (c, k, t, f) in enumerate(zip(clean, corrupted, targets, foils, strict=True)):
        clean_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        corrupted_ids = tokenizer(k, add_special_tokens=False)["input_ids"]
        if len(clean_ids) != len(corrupted_ids) or not clean_ids:
            kept.n_unequal_length += 1
            continue
        target, foil = answer_token_id(tokenizer, t), answer_token_id(tokenizer, f)
        if target == foil:
            raise ValueError(f"pair {row}: target {t!r} and foil {f!r} share their first token")
        kept.clean.append(list(clean_ids))
        kept.corrupted.append(list(corrupted_ids))
        kept.target_ids.append(target)
        kept.foil_ids.append(foil)
        kept.rows.append(row)
    return kept


def last_token_logits(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """[B, V] logits at each prompt's last real token, in float32."""
    rows = torch.arange(batch.size, device=logits.device)
    return logits[rows, batch.lengths - 1].float()


def logit_diff(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """[B] logit(target) − logit(foil) at the last token: the behaviour metric."""
    last = last_token_logits(logits, batch)
    return last.gather(1, batch.target_ids[:, None]).squeeze(1) - last.gather(1, batch.foil_ids[:, None]).squeeze(1)


def run_logits(model, input_ids: torch.Tensor, batch: PairBatch) -> torch.Tensor:  # noqa: ANN001
    return model(input_ids=input_ids, attention_mask=batch.attention_mask).logits
