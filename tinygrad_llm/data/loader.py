"""Reading token shards: a memory-mapped token stream, training batches, evaluation batches.

``TokenShards`` maps one split's shard files (written by ``prepare``) into memory, in
order, and reads them as one stream of tokens: nothing is loaded until it is sliced,
so a corpus larger than memory trains just as well.

Batches.  The stream of ``N`` tokens is cut into ``(N - 1) // block_size`` windows of
``block_size + 1`` tokens, window ``i`` starting at token ``i * block_size``: the inputs
``x`` of one window are its first ``block_size`` tokens and the targets ``y`` are the
same tokens shifted by one, so consecutive windows share one token (the last target of
one is the first input of the next) and no input token is seen twice per epoch.

``BatchLoader`` draws training batches.  Epoch ``e`` visits every window exactly once,
in the order of a permutation drawn from ``(seed, e)``; the epochs follow each other as
one endless stream of windows, and a batch takes the next ``batch_size * world_size``
of them (crossing into the next epoch if needed, so no window is ever dropped).  With
several processes, rank ``r`` takes the ``r``-th slice of ``batch_size`` windows of that
global batch: the ranks see disjoint data, and together exactly what one process with
``batch_size * world_size`` would see.  The state (epoch, position in the epoch, seed)
counts windows of the global stream, so a run resumes exactly, even with a different
number of processes.

``eval_windows`` reads the validation split the same way but in order, deterministically.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tinygrad_llm.data import DataError
from tinygrad_llm.data.shards import SPLITS, read_meta, shard_paths

__all__ = ["BatchLoader", "TokenShards", "eval_windows", "read_meta"]


class TokenShards:
    """One split (``"train"`` or ``"val"``) of a prepared directory, as one memory-mapped token stream.

    ``len(shards)`` is the number of tokens; ``shards[a:b]`` reads tokens ``a..b-1`` (across
    shard files if needed) into a new array of ``dtype``.  ``meta`` is the directory's
    ``meta.json``; ``vocab_size`` and ``eot_token`` come from it.

    Raises ``DataError`` if ``meta.json`` is missing or corrupt, or a shard is missing or
    has the wrong size.
    """

    def __init__(self, directory: str | os.PathLike[str], split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.directory = Path(directory)
        self.split = split
        self.meta: dict[str, Any] = read_meta(directory)
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.vocab_size: int = self.meta["vocab_size"]
        self.eot_token: int = self.meta["eot_token"]
        self.shards = [np.memmap(path, dtype=self.dtype, mode="r")
                       for path in shard_paths(directory, self.meta, split)]
        self._offsets = np.cumsum([0] + [len(shard) for shard in self.shards])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        """Tokens ``key.start .. key.stop - 1`` (a contiguous slice) as a new array."""
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("TokenShards reads contiguous slices only")
        parts = []
        shard = int(np.searchsorted(self._offsets, start, side="right")) - 1
        while start < stop:
            offset = int(self._offsets[shard])
            end = min(stop, int(self._offsets[shard + 1]))
            parts.append(self.shards[shard][start - offset:end - offset])
            start, shard = end, shard + 1
        return np.concatenate(parts) if parts else np.empty(0, self.dtype)

    def __repr__(self) -> str:
        return f"TokenShards({str(self.directory)!r}, {self.split!r}): {len(self):,} tokens"


def _windows(shards: TokenShards, indices: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``indices`` as ``(x, y)``: int64 arrays of shape ``(len(indices), block_size)``."""
    rows = np.stack([shards[i * block_size:i * block_size + block_size + 1] for i in indices.tolist()])
    rows = rows.astype(np.int64)
    return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])


def _window_count(shards: TokenShards, block_size: int) -> int:
    return max(len(shards) - 1, 0) // block_size


class BatchLoader:
    """Shuffled training batches from ``shards`` (see the module docstring).

    Args:
        shards: the token stream (usually the train split).
        batch_size: windows per batch in this process.
        block_size: tokens per window (the model's context length).
        seed: seeds every epoch's permutation, together with the epoch number.
        rank, world_size: this process's index and the number of processes.

    ``next_batch()`` returns ``(x, y)``, int64 arrays of shape ``(batch_size, block_size)``
    with ``y[:, t] == x[:, t + 1]`` for ``t < block_size - 1``.  Raises ``DataError`` when
    the stream holds fewer windows than one global batch.
    """

    def __init__(self, shards: TokenShards, batch_size: int, block_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1 or block_size < 1 or world_size < 1:
            raise ValueError(f"batch_size, block_size and world_size must be >= 1, "
                             f"got {batch_size}, {block_size}, {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.shards, self.batch_size, self.block_size = shards, batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_windows = _window_count(shards, block_size)
        global_batch = batch_size * world_size
        if self.num_windows < global_batch:
            raise DataError(f"the {shards.split} split is smaller than one batch: {global_batch} windows of "
                            f"{block_size} tokens ({batch_size} x {world_size} process(es)) need "
                            f"{global_batch * block_size + 1:,} tokens, it has {len(shards):,}")
        self.epoch = 0
        self.position = 0
        self._permutation: tuple[tuple[int, int], np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the windows."""
        key = (self.seed, epoch)
        if self._permutation is None or self._permutation[0] != key:
            self._permutation = (key, np.random.default_rng(key).permutation(self.num_windows))
        return self._permutation[1]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's share of the next global batch, as ``(x, y)``."""
        taken = []
        needed = self.batch_size * self.world_size
        while needed:
            order = self.permutation(self.epoch)
            part = order[self.position:self.position + needed]
            taken.append(part)
            needed -= len(part)
            self.position += len(part)
            if self.position == self.num_windows:
                self.epoch, self.position = self.epoch + 1, 0
        mine = np.concatenate(taken)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return _windows(self.shards, mine, self.block_size)

    def state_dict(self) -> dict[str, int]:
        """Where the global stream of windows stands: ``{"epoch", "position", "seed"}``."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state`` (from ``state_dict``, possibly of a run with another world size)."""
        epoch, position, seed = (int(state[key]) for key in ("epoch", "position", "seed"))
        if epoch < 0 or not 0 <= position < self.num_windows:
            raise DataError(f"loader state (epoch {epoch}, position {position}) does not fit this data "
                            f"({self.num_windows} windows of {self.block_size} tokens): did the data change?")
        self.epoch, self.position, self.seed = epoch, position, seed


def eval_windows(shards: TokenShards, block_size: int, batch_size: int,
                 max_batches: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches ``(x, y)`` of consecutive windows from the start of ``shards``, always the same ones.

    Every window of the split once (the last batch may be smaller), or the first
    ``max_batches`` batches.  Raises ``DataError`` at once if the split is shorter than
    one window.
    """
    count = _window_count(shards, block_size)
    if count == 0:
        raise DataError(f"the {shards.split} split has {len(shards):,} tokens, fewer than one window of "
                        f"{block_size} + 1; use a smaller block size or more validation data")
    if max_batches is not None:
        count = min(count, max_batches * batch_size)
    return (_windows(shards, np.arange(first, min(first + batch_size, count)), block_size)
            for first in range(0, count, batch_size))
