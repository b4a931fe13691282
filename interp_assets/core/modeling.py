"""Loading a causal LM and its tokenizer from a local folder, and batching prompts for it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is cuda but no CUDA device is visible (check --gres and CUDA_VISIBLE_DEVICES)")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def load_model_and_tokenizer(model_dir: str | Path, dtype: str = "float32", device: str = "auto"):  # noqa: ANN201
    """Load exactly as for a hub model, from disk only (no network at run time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars are noise in Dagster's run log
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; is the model downloaded / built?")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], local_files_only=True)
    model.to(pick_device(device)).eval()
    model.requires_grad_(False)
    return model, tokenizer


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [batch, seq] right-padded
    attention_mask: torch.Tensor  # [batch, seq] 1 on real tokens
    lengths: torch.Tensor  # [batch] number of real tokens
    rows: range  # indices of these texts in the full list


def tokenize_batches(
    tokenizer,  # noqa: ANN001
    texts: Sequence[str],
    batch_size: int,
    device: torch.device,
    max_tokens: int | None = None,
) -> Iterator[TokenBatch]:
    """Right-padded batches: real tokens never attend to padding, so each prompt's activations
    and logits are those of the prompt alone, and its last token is at ``lengths - 1``.
    ``max_tokens`` truncates each text. An item that is already token ids (a tensor row or a list
    of ints: a packed corpus window) is taken as it is."""
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        encoded = [_token_ids(tokenizer, text)[:max_tokens] for text in chunk]
        if any(len(ids) == 0 for ids in encoded):
            raise ValueError("an empty text cannot be scored")
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        yield TokenBatch(
            input_ids.to(device),
            attention_mask.to(device),
            attention_mask.sum(dim=1).to(device),
            range(start, start + len(chunk)),
        )


def _token_ids(tokenizer, item) -> list[int]:  # noqa: ANN001
    if isinstance(item, str):
        return tokenizer(item, add_special_tokens=False)["input_ids"]
    if isinstance(item, torch.Tensor):
        item = item.tolist()
    return [token for token in item if token >= 0]  # a packed window's padding (corpus.PAD) is no token


def answer_token_id(tokenizer, answer: str) -> int:  # noqa: ANN001
    """The first token of an answer such as " Mary": the logit the behaviour metric reads."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} tokenizes to nothing")
    return int(ids[0])
