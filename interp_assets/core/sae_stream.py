"""SAE training data streamed from the language model: no stored activations.

``sae.data_source: stream``. The SAEs of a group of layers train side by side from ONE forward
pass per batch of corpus windows (packed token windows, core/corpus.py), with hooks on every layer
of the group; no vector is written to disk. Order, for a seed (the same scheme as
``sae_data.ShuffledBatches``, at the level of windows): each epoch shuffles the training windows;
consecutive runs of ``chunk_texts`` of them form a *chunk*, whose activations (at most
``chunk_texts × seq_len`` vectors per layer: the shuffle buffer) are computed by forward passes
over those windows and shuffled again; batches are read from chunk after chunk and roll over into
the next epoch. Everything derives from (seed, epoch, chunk), so a position (epoch, chunk,
offset) in the token stream is enough to resume exactly: a resumed run recomputes only the
current chunk's forward passes. Memory is one chunk per layer, plus the windows' token ids.

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
    """The training windows and how they are chunked (the held-out windows are judged apart)."""

    train_windows: Any
    """Packed token windows ``[n, seq_len]`` (core/corpus.py), or plain texts."""
    skip_first: int
    """Positions at the start of each window fed but not used as data."""
    n_train_vectors: int
    chunk_texts: int


def plan_stream(windows, chunk_vectors: int, skip_first: int = 0) -> StreamPlan:  # noqa: ANN001
    """Chunk the training windows so that a chunk never holds more than ``chunk_vectors``
    vectors per layer (``chunk_vectors // kept positions`` windows, at least one)."""
    if len(windows) == 0:
        raise ValueError("the corpus has no training window")
    kept = windows.shape[1] - skip_first
    n_vectors = int((windows[:, skip_first:] >= 0).sum())  # a document window's padding holds no vector
    return StreamPlan(train_windows=windows, skip_first=skip_first, n_train_vectors=n_vectors,
                      chunk_texts=max(1, chunk_vectors // kept))


class ActivationStream:
    """Activations of several layers computed on demand, one forward pass per batch of texts."""

    def __init__(self, model, tokenizer, layers: Sequence[int], hook_point: str, plan: StreamPlan,  # noqa: ANN001
                 *, forward_batch_size: int, dtype: torch.dtype, seed: int) -> None:
        self.model, self.tokenizer, self.layers, self.hook_point = model, tokenizer, list(layers), hook_point
        self.plan, self.forward_batch_size = plan, forward_batch_size
        self.dtype, self.seed = dtype, seed
        self.d_in = hook_width(model.config, hook_point)
        self.n_chunks = -(-len(plan.train_windows) // plan.chunk_texts)
        self.forward_passes = 0
        self.tokens_forwarded = 0

    @torch.no_grad()
    def activations(self, texts: Sequence[Any]) -> dict[int, torch.Tensor]:
        """{layer: [n_tokens, d_in]} in ``dtype`` on the CPU, windows in order, the skipped first
        positions (and any padding) dropped."""
        device = next(self.model.parameters()).device
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        with recording(self.model, self.layers, self.hook_point, stop_after_deepest=True) as records:
            for batch in tokenize_batches(self.tokenizer, texts, self.forward_batch_size, device):
                forward_until_recorded(self.model, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       use_cache=False)
                keep = batch.attention_mask.bool()
                keep[:, : self.plan.skip_first] = False
                for layer in self.layers:
                    parts[layer].append(records[layer][keep].to(self.dtype).cpu())
                self.forward_passes += 1
                self.tokens_forwarded += int(keep.sum())
        return {layer: torch.cat(chunks) if chunks else torch.empty(0, self.d_in, dtype=self.dtype)
                for layer, chunks in parts.items()}

    def chunk(self, epoch: int, chunk: int) -> dict[int, torch.Tensor]:
        """The shuffled rows of one chunk for every layer (the same row order for every layer)."""
        order = torch.randperm(len(self.plan.train_windows), generator=_generator(self.seed, epoch))
        chosen = order[chunk * self.plan.chunk_texts : (chunk + 1) * self.plan.chunk_texts]
        rows = self.activations(self.plan.train_windows[chosen])
        n = next(iter(rows.values())).shape[0]
        perm = torch.randperm(n, generator=_generator(self.seed, epoch, chunk))
        return {layer: tensor[perm] for layer, tensor in rows.items()}

    def head(self, n: int) -> dict[int, torch.Tensor]:
        """The first ``n`` training vectors in window order (the input scale is set from them)."""
        per_window = (self.plan.train_windows[:, self.plan.skip_first :] >= 0).sum(dim=1).cumsum(dim=0)
        enough = int(torch.searchsorted(per_window, torch.tensor(n))) + 1
        rows = self.activations(self.plan.train_windows[:enough])
        return {layer: tensor[:n] for layer, tensor in rows.items()}

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
