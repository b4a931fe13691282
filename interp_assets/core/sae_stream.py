"""SAE training data streamed from the language model: no stored activations.

``sae.data_source: stream``. The SAEs of a group of layers train side by side from ONE forward
pass per batch of corpus texts, with hooks on every layer of the group; no vector is written to
disk. Order, for a seed (the same scheme as ``sae_data.ShuffledBatches``, at the level of texts):
each epoch shuffles the training texts; consecutive runs of ``chunk_texts`` of them form a
*chunk*, whose activations (at most ``chunk_texts × max_tokens`` vectors per layer: the shuffle
buffer) are computed by forward passes over those texts and shuffled again; batches are read from
chunk after chunk and roll over into the next epoch. Everything derives from (seed, epoch,
chunk), so a position (epoch, chunk, offset) in the token stream is enough to resume exactly: a
resumed run recomputes only the current chunk's forward passes. Memory is one chunk per layer.

Layers advance in lockstep: each layer's trainer (``sae_training.train_sae``, unchanged) runs in
its own thread and reads its batches through a barrier, whose action (run once per step, by the
last thread to arrive) slices the next batch of every layer from the shared chunk, computing the
next chunk when one is used up. Every layer therefore sees the same positions at the same steps,
and a checkpoint request (SLURM's USR1) is answered at the same step by every layer.

Each layer's activations are what the model computes there whichever other layers are hooked, so
a layer's SAE is bit-identical whatever group it trains in (on the same device and dtype).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from interp_assets.core.hooks import forward_until_recorded, hook_width, recording
from interp_assets.core.modeling import tokenize_batches
from interp_assets.core.sae_data import DataPosition


def _generator(seed: int, *keys: int) -> torch.Generator:
    # The key mixing of sae_data.ShuffledBatches: one scheme for both data sources.
    for key in keys:
        seed = (seed * 1_000_003 + key + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class StreamPlan:
    """Which texts train, which are held out, and how the training texts are chunked."""

    train_texts: Sequence[str]
    eval_texts: Sequence[str]
    eval_vectors: int
    """The last ``eval_vectors`` vectors of ``eval_texts`` (in text order) form the eval set."""
    n_train_vectors: int
    chunk_texts: int


def plan_stream(tokenizer, texts: Sequence[str], max_tokens: int, eval_vectors: int,  # noqa: ANN001
                chunk_vectors: int) -> StreamPlan:
    """Hold out the corpus's last vectors for evaluation as the cached path does (the last
    ``min(eval_vectors, total // 10)`` vectors in text order; here whole texts, the boundary text
    held out entirely), and size chunks so that a chunk never holds more than ``chunk_vectors``
    vectors per layer (``chunk_vectors // max_tokens`` texts, at least one)."""
    lengths = [min(len(ids), max_tokens) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    if any(length == 0 for length in lengths):
        raise ValueError("the corpus has an empty text")
    total = sum(lengths)
    held_out = min(eval_vectors, total // 10)
    n_eval_texts, covered = 0, 0
    while covered < held_out:
        n_eval_texts += 1
        covered += lengths[-n_eval_texts]
    split = len(texts) - n_eval_texts
    if split <= 0:
        raise ValueError("the corpus is too small to hold out evaluation vectors and still train")
    return StreamPlan(train_texts=list(texts[:split]), eval_texts=list(texts[split:]), eval_vectors=held_out,
                      n_train_vectors=sum(lengths[:split]), chunk_texts=max(1, chunk_vectors // max_tokens))


class ActivationStream:
    """Activations of several layers computed on demand, one forward pass per batch of texts."""

    def __init__(self, model, tokenizer, layers: Sequence[int], hook_point: str, plan: StreamPlan,  # noqa: ANN001
                 *, max_tokens: int, forward_batch_size: int, dtype: torch.dtype, seed: int) -> None:
        self.model, self.tokenizer, self.layers, self.hook_point = model, tokenizer, list(layers), hook_point
        self.plan, self.max_tokens, self.forward_batch_size = plan, max_tokens, forward_batch_size
        self.dtype, self.seed = dtype, seed
        self.d_in = hook_width(model.config, hook_point)
        self.n_chunks = -(-len(plan.train_texts) // plan.chunk_texts)
        self.forward_passes = 0
        self.tokens_forwarded = 0

    @torch.no_grad()
    def activations(self, texts: Sequence[str]) -> dict[int, torch.Tensor]:
        """{layer: [n_tokens, d_in]} in ``dtype`` on the CPU, texts in order, padding dropped."""
        device = next(self.model.parameters()).device
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        with recording(self.model, self.layers, self.hook_point, stop_after_deepest=True) as records:
            for batch in tokenize_batches(self.tokenizer, texts, self.forward_batch_size, device, self.max_tokens):
                forward_until_recorded(self.model, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       use_cache=False)
                keep = batch.attention_mask.bool()
                for layer in self.layers:
                    parts[layer].append(records[layer][keep].to(self.dtype).cpu())
                self.forward_passes += 1
                self.tokens_forwarded += int(keep.sum())
        return {layer: torch.cat(chunks) if chunks else torch.empty(0, self.d_in, dtype=self.dtype)
                for layer, chunks in parts.items()}

    def chunk(self, epoch: int, chunk: int) -> dict[int, torch.Tensor]:
        """The shuffled rows of one chunk for every layer (the same row order for every layer)."""
        order = torch.randperm(len(self.plan.train_texts), generator=_generator(self.seed, epoch))
        chosen = order[chunk * self.plan.chunk_texts : (chunk + 1) * self.plan.chunk_texts].tolist()
        rows = self.activations([self.plan.train_texts[i] for i in chosen])
        n = next(iter(rows.values())).shape[0]
        perm = torch.randperm(n, generator=_generator(self.seed, epoch, chunk))
        return {layer: tensor[perm] for layer, tensor in rows.items()}

    def head(self, n: int) -> dict[int, torch.Tensor]:
        """The first ``n`` training vectors in text order (the input scale is set from them)."""
        texts, count = [], 0
        for text in self.plan.train_texts:
            if count >= n:
                break
            texts.append(text)
            count += min(len(self.tokenizer(text, add_special_tokens=False)["input_ids"]), self.max_tokens)
        return {layer: rows[:n] for layer, rows in self.activations(texts).items()}

    def eval_vectors(self) -> dict[int, torch.Tensor]:
        rows = self.activations(self.plan.eval_texts)
        return {layer: tensor[tensor.shape[0] - self.plan.eval_vectors :] for layer, tensor in rows.items()}

    def next_position(self, epoch: int, chunk: int) -> tuple[int, int]:
        return (epoch, chunk + 1) if chunk + 1 < self.n_chunks else (epoch + 1, 0)


class _LayerData:
    """What ``train_sae`` reads from ``batches.data``: width, size, and the head for the scale."""

    def __init__(self, lockstep: Lockstep, layer: int) -> None:
        self._lockstep, self._layer = lockstep, layer
        self.d_in = lockstep.stream.d_in
        self.n_vectors = lockstep.stream.plan.n_train_vectors

    def head(self, n: int) -> torch.Tensor:
        return self._lockstep.head(self._layer, n)


class LayerBatches:
    """One layer's view of the lockstep stream, with ``ShuffledBatches``'s interface."""

    def __init__(self, lockstep: Lockstep, layer: int) -> None:
        self.lockstep, self.layer = lockstep, layer
        self.data = _LayerData(lockstep, layer)
        self.batch_size = lockstep.batch_size

    def iterate(self, start: DataPosition = DataPosition()) -> Iterator[tuple[torch.Tensor, DataPosition]]:
        self.lockstep.start_at(self.layer, start)
        while True:
            yield self.lockstep.next_batch(self.layer)


class Lockstep:
    """Feeds the SAEs of several layers the same stream positions, one step at a time."""

    def __init__(self, stream: ActivationStream, batch_size: int,
                 checkpoint_requested: Callable[[], bool] = lambda: False) -> None:
        if batch_size > stream.plan.n_train_vectors:
            raise ValueError(f"batch_size {batch_size} exceeds the {stream.plan.n_train_vectors} training vectors")
        self.stream, self.batch_size = stream, batch_size
        self._checkpoint_requested = checkpoint_requested
        self._lock = threading.Lock()
        self._head: dict[int, torch.Tensor] | None = None
        self._barrier = threading.Barrier(len(stream.layers), action=self._advance)
        self._starts: dict[int, DataPosition] = {}
        self._position: DataPosition | None = None
        self._rows: dict[int, torch.Tensor] = {}
        self._batch: dict[int, torch.Tensor] = {}
        self._next_position = DataPosition()
        self.checkpoint_now = False

    def head(self, layer: int, n: int) -> torch.Tensor:
        with self._lock:
            if self._head is None:
                self._head = self.stream.head(n)
            return self._head[layer][:n]

    def start_at(self, layer: int, start: DataPosition) -> None:
        with self._lock:
            self._starts[layer] = start

    def abort(self) -> None:
        self._barrier.abort()

    def _advance(self) -> None:
        # Run by exactly one thread while the others wait: the next batch of every layer.
        if self._position is None:
            starts = set(self._starts.values())
            if len(starts) != 1:
                raise RuntimeError(f"the layers of a stream group start at different positions {self._starts}")
            start = starts.pop()
            self._position = start
            self._rows = self.stream.chunk(start.epoch, start.chunk)
        epoch, chunk, offset = self._position.as_list()
        pieces: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.stream.layers}
        need = self.batch_size
        while need:
            available = next(iter(self._rows.values())).shape[0]
            take = min(need, available - offset)
            for layer, rows in self._rows.items():
                pieces[layer].append(rows[offset : offset + take])
            offset, need = offset + take, need - take
            if offset == available:  # chunk used up: the next position is the next chunk's start
                epoch, chunk = self.stream.next_position(epoch, chunk)
                self._rows, offset = self.stream.chunk(epoch, chunk), 0
        self._position = DataPosition(epoch, chunk, offset)
        self._batch = {layer: parts[0] if len(parts) == 1 else torch.cat(parts) for layer, parts in pieces.items()}
        self.checkpoint_now = self._checkpoint_requested()

    def next_batch(self, layer: int) -> tuple[torch.Tensor, DataPosition]:
        self._barrier.wait()
        assert self._position is not None
        return self._batch[layer], self._position


def train_in_lockstep(lockstep: Lockstep, train_one: Callable[[int, LayerBatches, Callable[[], bool]], Any]) -> dict[int, Any]:
    """Run ``train_one(layer, batches, checkpoint_requested)`` for every layer of the stream, each
    in its own thread, in lockstep; returns {layer: result}. One layer's failure stops them all and
    is raised here."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def run(layer: int) -> None:
        try:
            results[layer] = train_one(layer, LayerBatches(lockstep, layer), lambda: lockstep.checkpoint_now)
        except threading.BrokenBarrierError:
            pass  # another layer failed first; its error is the one raised
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)
            lockstep.abort()

    threads = [threading.Thread(target=run, args=(layer,), name=f"sae-layer-{layer}") for layer in lockstep.stream.layers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    missing = sorted(set(lockstep.stream.layers) - set(results))
    if missing:
        raise RuntimeError(f"stream training stopped before layers {missing} finished")
    return results
