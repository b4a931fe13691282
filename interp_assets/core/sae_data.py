"""Streaming SAE training data from memory-mapped safetensors activation shards.

Order, for a seed: each epoch shuffles fixed-size *blocks* of stored vectors; consecutive groups
of blocks form a *chunk* (the shuffle buffer), whose rows are shuffled again; batches are read
from chunk after chunk and roll over into the next epoch when steps × batch exceeds the data.
Everything derives from (seed, epoch, chunk), so a position (epoch, chunk, offset) is enough to
resume exactly, and memory is one chunk, whatever the number of stored vectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

TENSOR = "activations"


@dataclass(frozen=True)
class DataPosition:
    epoch: int = 0
    chunk: int = 0
    offset: int = 0
    """Row inside the shuffled chunk where the next batch starts."""

    def as_list(self) -> list[int]:
        return [self.epoch, self.chunk, self.offset]


@dataclass(frozen=True)
class _Block:
    shard: int
    start: int
    stop: int


class ShardedActivations:
    """A read-only view of activation shards: ``[n_vectors, d_in]`` split over files."""

    def __init__(self, shard_paths: Sequence[str | Path], held_out: int = 0) -> None:
        """``held_out`` vectors at the end of the last shards are kept out of training (eval set)."""
        self.shard_paths = [str(p) for p in shard_paths]
        if not self.shard_paths:
            raise ValueError("no activation shards to train on")
        self.shard_sizes: list[int] = []
        d_in = None
        for path in self.shard_paths:
            with safe_open(path, framework="pt") as handle:
                shape = handle.get_slice(TENSOR).get_shape()
            self.shard_sizes.append(shape[0])
            if d_in is not None and shape[1] != d_in:
                raise ValueError(f"{path}: width {shape[1]} differs from the other shards ({d_in})")
            d_in = shape[1]
        self.d_in = int(d_in or 0)
        total = sum(self.shard_sizes)
        if not 0 <= held_out < total:
            raise ValueError(f"held_out={held_out} must leave training vectors (have {total})")
        self.n_vectors = total - held_out
        self.held_out = held_out

    def _read(self, shard: int, start: int, stop: int) -> torch.Tensor:
        # safe_open memory-maps the file: only the rows sliced here are read.
        with safe_open(self.shard_paths[shard], framework="pt") as handle:
            return handle.get_slice(TENSOR)[start:stop]

    def _global_rows(self, first: int, last: int) -> torch.Tensor:
        parts, offset = [], 0
        for shard, size in enumerate(self.shard_sizes):
            lo, hi = max(first - offset, 0), min(last - offset, size)
            if lo < hi:
                parts.append(self._read(shard, lo, hi))
            offset += size
        return torch.cat(parts)

    def held_out_vectors(self) -> torch.Tensor:
        """The evaluation vectors [held_out, d_in] (never used for training)."""
        return self._global_rows(self.n_vectors, self.n_vectors + self.held_out)

    def head(self, n: int) -> torch.Tensor:
        return self._global_rows(0, min(n, self.n_vectors))

    def _blocks(self, block_vectors: int) -> list[_Block]:
        blocks, offset = [], 0
        for shard, size in enumerate(self.shard_sizes):
            usable = min(size, max(self.n_vectors - offset, 0))
            blocks += [_Block(shard, s, min(s + block_vectors, usable)) for s in range(0, usable, block_vectors)]
            offset += size
        return blocks


class ShuffledBatches:
    """Batches of a fixed size, in a seeded order that can resume from any ``DataPosition``."""

    def __init__(
        self, data: ShardedActivations, batch_size: int, seed: int, chunk_vectors: int = 65_536, block_vectors: int = 1024
    ) -> None:
        if batch_size > data.n_vectors:
            raise ValueError(f"batch_size {batch_size} exceeds the {data.n_vectors} training vectors")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.blocks = data._blocks(block_vectors)
        self.blocks_per_chunk = max(1, chunk_vectors // block_vectors)
        self.n_chunks = -(-len(self.blocks) // self.blocks_per_chunk)

    def _generator(self, *keys: int) -> torch.Generator:
        generator = torch.Generator()
        seed = self.seed
        for key in keys:
            seed = (seed * 1_000_003 + key + 1) % (2**63 - 1)
        return generator.manual_seed(seed)

    def _chunk(self, epoch: int, chunk: int) -> torch.Tensor:
        order = torch.randperm(len(self.blocks), generator=self._generator(epoch))
        chosen = order[chunk * self.blocks_per_chunk : (chunk + 1) * self.blocks_per_chunk].tolist()
        rows = torch.cat([self.data._read(b.shard, b.start, b.stop) for b in (self.blocks[i] for i in chosen)])
        return rows[torch.randperm(rows.shape[0], generator=self._generator(epoch, chunk))]  # [chunk rows, d_in]

    def _next(self, epoch: int, chunk: int) -> tuple[int, int]:
        return (epoch, chunk + 1) if chunk + 1 < self.n_chunks else (epoch + 1, 0)

    def iterate(self, start: DataPosition = DataPosition()) -> Iterator[tuple[torch.Tensor, DataPosition]]:
        """Yield (batch [batch_size, d_in] in the stored dtype, position of the next batch) forever."""
        epoch, chunk, offset = start.epoch, start.chunk, start.offset
        rows = self._chunk(epoch, chunk)
        while True:
            pieces, need = [], self.batch_size
            while need:
                take = min(need, rows.shape[0] - offset)
                pieces.append(rows[offset : offset + take])
                offset, need = offset + take, need - take
                if offset == rows.shape[0]:  # chunk used up: the next position is the next chunk's start
                    epoch, chunk = self._next(epoch, chunk)
                    rows, offset = self._chunk(epoch, chunk), 0
            yield (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), DataPosition(epoch, chunk, offset)
