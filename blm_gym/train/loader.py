"""Training windows as a ``torch.utils.data.Dataset``, the step-seeded batch order, and the DataLoader.

- :class:`CachedWindows`: windows of one or more on-disk caches (:mod:`blm_gym.train.window_cache`),
  concatenated, read by positional reads of their shards; :class:`InMemoryWindows`: windows already
  collated in memory (scenes passed in by the caller). Both read a list of indices into one
  :class:`AgentBatch` ``(B, ...)`` (``__getitems__``), so a DataLoader with any number of workers
  yields the batches the training loop consumes, as the loop used to build them.
- :class:`StepBatchSampler`: the windows of step ``s`` are drawn uniformly with replacement from a
  generator seeded with ``(seed, s)`` alone (:func:`step_indices`), so the data order is a function
  of the seed and the step: a run resumed at step ``s`` reads what an uninterrupted run reads, and
  workers can prefetch. Under torchrun each rank draws from its own windows
  (:func:`blm_gym.train.distributed.shard_range`).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from blm_gym.models.batch import AgentBatch
from blm_gym.train.window_cache import ShardReader, WindowCache, records_to_batch


class Windows(Dataset):
    """A fixed sequence of training windows; ``read(indices)`` collates them into one :class:`AgentBatch`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, indices: Sequence[int]) -> AgentBatch:
        raise NotImplementedError

    def __getitem__(self, index: int) -> AgentBatch:
        """Window ``index`` as a B = 1 batch."""
        return self.read([index])

    def __getitems__(self, indices: Sequence[int]) -> AgentBatch:
        """What the DataLoader's fetcher calls with a whole batch of indices (one read, not one per window)."""
        return self.read(indices)

    def chunks(self, size: int = 256) -> Iterator[AgentBatch]:
        """Every window in order, ``size`` at a time (a bounded amount in memory)."""
        for lo in range(0, len(self), size):
            yield self.read(range(lo, min(lo + size, len(self))))

    def read_all(self) -> AgentBatch:
        """Every window in one batch (e.g. a small validation set)."""
        return self.read(range(len(self)))


class InMemoryWindows(Windows):
    """Windows already collated in memory (one :class:`AgentBatch`)."""

    def __init__(self, batch: AgentBatch):
        self.batch = batch

    def __len__(self) -> int:
        return self.batch.batch_size

    def read(self, indices: Sequence[int]) -> AgentBatch:
        return self.batch.index(torch.as_tensor(np.asarray(indices, np.int64)))


class CachedWindows(Windows):
    """The windows of ``caches``, in order (cache after cache, shard after shard).

    Holds the shard list (paths, offsets, counts) and at most a few open files: it pickles to
    DataLoader workers for a few bytes, and reading memory stays flat however large the caches
    are (:class:`~blm_gym.train.window_cache.ShardReader`).
    """

    def __init__(self, caches: Sequence[WindowCache]):
        if not caches:
            raise ValueError("CachedWindows: no caches given")
        dtypes = {c.dtype for c in caches}
        if len(dtypes) > 1:
            raise ValueError("CachedWindows: the caches hold windows of different shapes (window configs "
                             f"{sorted({str(c.window) for c in caches})}); cut them with the same max_agents / steps")
        self.folders = [str(c.folder) for c in caches]
        self.reader = ShardReader([s for c in caches for s in c.shards], dtypes.pop())

    def __len__(self) -> int:
        return len(self.reader)

    def read(self, indices: Sequence[int]) -> AgentBatch:
        return records_to_batch(self.reader.read(indices))

    def scene_index(self, indices: Sequence[int]) -> np.ndarray:
        """Position of each window's scene in its source (``(len(indices),)`` int32)."""
        return self.reader.read(indices)["scene"]


def step_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """Positions ``(min(batch_size, n),)`` in ``[0, n)`` of the windows of training step ``step``:
    uniform with replacement, from a generator seeded with ``(seed, step)`` only."""
    rng = np.random.default_rng([seed % 2**64, step])
    return rng.integers(0, n, size=min(batch_size, n))


class StepBatchSampler(Sampler[list[int]]):
    """One list of window indices per training step ``start .. stop - 1``, drawn among ``positions``
    (the indices of this rank's windows, e.g. a ``range``) by :func:`step_indices`."""

    def __init__(self, positions: Sequence[int], batch_size: int, seed: int, start: int, stop: int):
        if len(positions) == 0:
            raise ValueError("StepBatchSampler: no windows to draw from")
        self.positions, self.batch_size, self.seed = positions, int(batch_size), int(seed)
        self.start, self.stop = int(start), int(stop)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            picks = step_indices(self.seed, step, len(self.positions), self.batch_size)
            yield [int(self.positions[int(p)]) for p in picks]


def _as_is(batch: AgentBatch) -> AgentBatch:
    """The DataLoader's collate_fn: ``Windows.__getitems__`` already returns the collated batch."""
    return batch


def make_loader(windows: Windows, sampler: Sampler, workers: int = 0) -> DataLoader:
    """A DataLoader yielding one :class:`AgentBatch` per list ``sampler`` gives, in its order.

    ``workers`` processes read ahead (two batches each); windows held in memory are read in the
    main process whatever ``workers`` says (copying them to workers would only cost).
    """
    workers = 0 if isinstance(windows, InMemoryWindows) else int(workers)
    return DataLoader(windows, batch_sampler=sampler, collate_fn=_as_is, num_workers=workers,
                      prefetch_factor=2 if workers else None)


__all__ = ["Windows", "InMemoryWindows", "CachedWindows", "StepBatchSampler", "step_indices", "make_loader"]
