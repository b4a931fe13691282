"""Activation capture: ONE forward pass per batch records every requested layer.

Vectors stream into per-(layer, source) buffers that are flushed as fixed-size shards through a
caller-supplied ``write_shard``; memory is O(layers × shard), independent of the dataset size.
After every flush the capture reports a ``CaptureProgress`` (which batch, how many of its rows
are already in written shards, and the shard records so far); a capture started from one
re-reads only from there and writes exactly the shards an uninterrupted capture would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from interp_assets.core.hooks import forward_until_recorded, recording
from interp_assets.core.modeling import tokenize_batches
from interp_assets.core.progress import Progress


@dataclass(frozen=True)
class CaptureSource:
    """A list of texts (or packed token windows) and which of their token positions to keep."""

    name: str
    texts: Sequence[Any]
    """Strings, or token-id rows (a ``[n, seq_len]`` tensor of corpus windows)."""
    last_n_tokens: int | None = None
    """Keep only each text's last N positions (behaviour prompts); None keeps every position."""
    max_tokens: int | None = None
    """Truncate each text to this many tokens."""
    skip_first_positions: int = 0
    """Feed but never keep each text's first positions (corpus.exclude_first_positions)."""


ShardWriter = Callable[[int, str, int, dict[str, torch.Tensor]], dict[str, Any]]
"""write_shard(layer, source, shard_index, tensors) -> a manifest record for that shard."""


@dataclass(frozen=True)
class CaptureProgress:
    """Where a capture stands after its last flush: every layer has written the same rows, because
    every layer keeps the same positions of every batch."""

    source: int
    """Index of the source in progress (``len(sources)``: all done)."""
    batch: int
    """First batch of that source with rows not yet in a written shard."""
    rows_written: int
    """How many of that batch's kept rows are already in written shards."""
    shards: dict[int, dict[str, list[dict[str, Any]]]]
    """{layer: {source: shard records}} written so far."""

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "batch": self.batch, "rows_written": self.rows_written,
                "shards": {str(layer): by_source for layer, by_source in self.shards.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaptureProgress:
        return cls(int(data["source"]), int(data["batch"]), int(data["rows_written"]),
                   {int(layer): by_source for layer, by_source in data["shards"].items()})


@dataclass
class _Buffer:
    parts: list[dict[str, torch.Tensor]] = field(default_factory=list)
    rows: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    """Records of the shards written (appended by the writer thread, in order)."""
    queued: int = 0
    """Shards handed to the writer so far (the main thread's count)."""


class _ShardWriter:
    """Writes shards and checkpoints on one background thread, in the order they are queued, while
    the next forward passes run (the writes were 5–20 % of capture time on CPU). At most
    ``max_pending`` tasks wait, so memory stays O(shard). After a failed task nothing more runs (a
    later checkpoint would name a shard that is not there); its error is raised in the caller."""

    def __init__(self, max_pending: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-writer")
        self._slots = threading.Semaphore(max_pending)
        self._pending: list[Future[None]] = []
        self._failed = threading.Event()

    def submit(self, task: Callable[[], None]) -> None:
        self.raise_failure()
        self._slots.acquire()

        def run() -> None:
            try:
                if not self._failed.is_set():
                    task()
            except BaseException:
                self._failed.set()
                raise
            finally:
                self._slots.release()

        self._pending.append(self._pool.submit(run))

    def raise_failure(self) -> None:
        """Raise the first failed task's error, if any (and forget finished tasks)."""
        still = []
        for future in self._pending:
            if future.done():
                future.result()
            else:
                still.append(future)
        self._pending = still

    def close(self, raise_failure: bool = True) -> None:
        """Wait for every queued write and checkpoint; raise the first failure."""
        self._pool.shutdown(wait=True)
        if raise_failure:
            self.raise_failure()


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
    resume_from: CaptureProgress | None = None,
    on_progress: Callable[[CaptureProgress], None] = lambda progress: None,
) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Capture ``hook_point`` at ``layers`` for every source; returns {layer: {source: shard records}}.

    Each shard holds ``activations [n, width]`` (``dtype``), ``token_ids [n]``, ``text_index [n]``
    (row in the source's texts) and ``position [n]`` (token position in that text), in text order.
    ``on_progress`` is called after every batch that wrote a shard and at the end of each source,
    once the shards are written; pass its last value as ``resume_from`` to continue from there.
    """
    device = next(model.parameters()).device
    start = resume_from or CaptureProgress(0, 0, 0, {})
    buffers = {
        (layer, source.name): _Buffer(shards=list(start.shards.get(layer, {}).get(source.name, [])))
        for layer in layers
        for source in sources
    }

    for buffer in buffers.values():
        buffer.queued = len(buffer.shards)
    writer = _ShardWriter(max_pending=len(layers) + 1)

    def progress(source: int, batch: int, rows_written: int) -> None:
        # Queued behind the shards it lists: it runs once they are written, never before.
        def save() -> None:
            shards = {layer: {s.name: list(buffers[(layer, s.name)].shards) for s in sources} for layer in layers}
            on_progress(CaptureProgress(source, batch, rows_written, shards))

        writer.submit(save)

    def flush(layer: int, source: str, final: bool) -> None:
        buffer = buffers[(layer, source)]
        while buffer.rows >= shard_max_vectors or (final and buffer.rows > 0):
            merged = _concat(buffer.parts)
            take = min(shard_max_vectors, buffer.rows)
            shard = {name: tensor[:take].contiguous() for name, tensor in merged.items()}
            rest = {name: tensor[take:] for name, tensor in merged.items()}
            buffer.rows -= take
            buffer.parts = [rest] if buffer.rows else []
            index, buffer.queued = buffer.queued, buffer.queued + 1
            writer.submit(lambda buffer=buffer, index=index, shard=shard:
                          buffer.shards.append(write_shard(layer, source, index, shard)))

    total_tokens, started = 0, time.perf_counter()
    n_batches = sum(-(-len(source.texts) // batch_size) for source in sources)
    done_batches = 0
    if resume_from is not None:
        done_batches = sum(-(-len(source.texts) // batch_size) for source in sources[: start.source]) + start.batch
        log(f"capture: resuming at batch {done_batches}/{n_batches} from the last checkpoint")
    meter = Progress(n_batches, log, label="capture", unit="batch", every_s=log_every_s, start=done_batches)
    try:
        with recording(model, layers, hook_point, stop_after_deepest=True) as records:
            for source_index, source in enumerate(sources):
                if source_index < start.source:
                    continue
                first_batch, skip_rows = (start.batch, start.rows_written) if source_index == start.source else (0, 0)
                batches = tokenize_batches(tokenizer, source.texts, batch_size, device, source.max_tokens)
                for batch_index, batch in enumerate(batches):
                    if batch_index < first_batch:
                        continue  # every row of this batch is in a written shard
                    forward_until_recorded(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                    positions = torch.arange(batch.input_ids.shape[1], device=device)[None, :]  # [1, T]
                    keep = batch.attention_mask.bool()  # [B, T]
                    if source.last_n_tokens is not None:
                        keep &= positions >= (batch.lengths[:, None] - source.last_n_tokens)
                    if source.skip_first_positions:
                        keep &= positions >= source.skip_first_positions
                    text_index = torch.tensor(list(batch.rows), device=device)[:, None].expand_as(keep)
                    skip = skip_rows if batch_index == first_batch else 0  # rows already written before a resume
                    index = {
                        "token_ids": batch.input_ids[keep].to(torch.int32).cpu()[skip:],
                        "text_index": text_index[keep].to(torch.int32).cpu()[skip:],
                        "position": positions.expand_as(keep)[keep].to(torch.int32).cpu()[skip:],
                    }
                    n_kept, shards_before = skip + index["token_ids"].shape[0], buffers[(layers[0], source.name)].queued
                    for layer in layers:
                        vectors = records[layer][keep].to(dtype).cpu()[skip:]  # [n_kept - skip, width]
                        buffer = buffers[(layer, source.name)]
                        buffer.parts.append({"activations": vectors, **index})
                        buffer.rows += vectors.shape[0]
                        flush(layer, source.name, final=False)
                    buffered = buffers[(layers[0], source.name)]
                    if buffered.queued > shards_before:
                        # What is still buffered is the tail of this batch: a resume redoes this batch
                        # and drops the rows the written shards already hold.
                        if buffered.rows:
                            progress(source_index, batch_index, n_kept - buffered.rows)
                        else:
                            progress(source_index, batch_index + 1, 0)
                    total_tokens += int(batch.attention_mask.sum())
                    done_batches += 1
                    now = time.perf_counter()
                    meter.update(done_batches, f"{total_tokens} tokens, {total_tokens / max(now - started, 1e-9):.0f} "
                                               f"tokens/s, {len(layers)} layers in one pass")
                for layer in layers:
                    flush(layer, source.name, final=True)
                progress(source_index + 1, 0, 0)
    except BaseException:
        writer.close(raise_failure=False)  # the writes queued so far still land; this error is the one to see
        raise
    writer.close()
    return {layer: {source.name: buffers[(layer, source.name)].shards for source in sources} for layer in layers}
