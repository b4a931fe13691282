"""Activation capture: ONE forward pass per batch records every requested layer.

Vectors stream into per-(layer, source) buffers that are flushed as fixed-size shards through a
caller-supplied ``write_shard``; memory is O(layers × shard), independent of the dataset size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from interp_assets.core.hooks import recording
from interp_assets.core.modeling import tokenize_batches


@dataclass(frozen=True)
class CaptureSource:
    """A list of texts and which of their token positions to keep."""

    name: str
    texts: Sequence[str]
    last_n_tokens: int | None = None
    """Keep only each text's last N positions (behaviour prompts); None keeps every position."""
    max_tokens: int | None = None
    """Truncate each text to this many tokens (corpus documents)."""


ShardWriter = Callable[[int, str, int, dict[str, torch.Tensor]], dict[str, Any]]
"""write_shard(layer, source, shard_index, tensors) -> a manifest record for that shard."""


@dataclass
class _Buffer:
    parts: list[dict[str, torch.Tensor]] = field(default_factory=list)
    rows: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


@torch.no_grad()
def capture_activations(
    model,  # noqa: ANN001
    tokenizer,  # noqa: ANN001
    layers: Sequence[int],
    hook_point: str,
    sources: Sequence[CaptureSource],
    batch_size: int,
    dtype: torch.dtype,
    shard_max_vectors: int,
    write_shard: ShardWriter,
    log: Callable[[str], None] = lambda message: None,
    log_every_s: float = 10.0,
) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Capture ``hook_point`` at ``layers`` for every source; returns {layer: {source: shard records}}.

    Each shard holds ``activations [n, width]`` (``dtype``), ``token_ids [n]``, ``text_index [n]``
    (row in the source's texts) and ``position [n]`` (token position in that text), in text order.
    """
    device = next(model.parameters()).device
    buffers = {(layer, source.name): _Buffer() for layer in layers for source in sources}

    def flush(layer: int, source: str, final: bool) -> None:
        buffer = buffers[(layer, source)]
        while buffer.rows >= shard_max_vectors or (final and buffer.rows > 0):
            merged = _concat(buffer.parts)
            take = min(shard_max_vectors, buffer.rows)
            shard = {name: tensor[:take].contiguous() for name, tensor in merged.items()}
            rest = {name: tensor[take:] for name, tensor in merged.items()}
            buffer.rows -= take
            buffer.parts = [rest] if buffer.rows else []
            buffer.shards.append(write_shard(layer, source, len(buffer.shards), shard))

    total_tokens, started, last_log = 0, time.perf_counter(), time.perf_counter()
    n_batches = sum(-(-len(source.texts) // batch_size) for source in sources)
    done_batches = 0
    with recording(model, layers, hook_point) as records:
        for source in sources:
            for batch in tokenize_batches(tokenizer, source.texts, batch_size, device, source.max_tokens):
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                positions = torch.arange(batch.input_ids.shape[1], device=device)[None, :]  # [1, T]
                keep = batch.attention_mask.bool()  # [B, T]
                if source.last_n_tokens is not None:
                    keep &= positions >= (batch.lengths[:, None] - source.last_n_tokens)
                text_index = torch.tensor(list(batch.rows), device=device)[:, None].expand_as(keep)
                index = {
                    "token_ids": batch.input_ids[keep].to(torch.int32).cpu(),
                    "text_index": text_index[keep].to(torch.int32).cpu(),
                    "position": positions.expand_as(keep)[keep].to(torch.int32).cpu(),
                }
                for layer in layers:
                    vectors = records[layer][keep].to(dtype).cpu()  # [n_kept, width]
                    buffer = buffers[(layer, source.name)]
                    buffer.parts.append({"activations": vectors, **index})
                    buffer.rows += vectors.shape[0]
                    flush(layer, source.name, final=False)
                total_tokens += int(batch.attention_mask.sum())
                done_batches += 1
                now = time.perf_counter()
                if now - last_log >= log_every_s or done_batches == n_batches:
                    last_log = now
                    log(
                        f"capture: batch {done_batches}/{n_batches}, {total_tokens} tokens, "
                        f"{total_tokens / max(now - started, 1e-9):.0f} tokens/s, {len(layers)} layers in one pass"
                    )
            for layer in layers:
                flush(layer, source.name, final=True)
    return {layer: {source.name: buffers[(layer, source.name)].shards for source in sources} for layer in layers}
