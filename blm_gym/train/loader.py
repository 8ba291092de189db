"""Training windows as a ``torch.utils.data.Dataset``, the step-seeded batch order, and the loader.

- :class:`CachedWindows`: windows of one or more on-disk caches (:mod:`blm_gym.train.window_cache`),
  concatenated, read by positional reads of their shards; :class:`InMemoryWindows`: windows already
  collated in memory (scenes passed in by the caller). Both read a list of indices into one
  :class:`AgentBatch` ``(B, ...)`` (``read``, ``__getitems__``).
- :class:`WindowLoader` (:func:`make_loader`): the batches the training loop consumes, as the loop
  used to build them, read in the training process or by DataLoader worker processes that hand
  each batch over through a reused slot of shared memory.
- :class:`StepBatchSampler`: the windows of step ``s`` are drawn uniformly with replacement from a
  generator seeded with ``(seed, s)`` alone (:func:`step_indices`), so the data order is a function
  of the seed and the step: a run resumed at step ``s`` reads what an uninterrupted run reads, and
  workers can prefetch. Under torchrun each rank draws from its own windows
  (:func:`blm_gym.train.distributed.shard_range`).
"""
from __future__ import annotations

import time
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from blm_gym.models.batch import AgentBatch
from blm_gym.train.window_cache import ShardReader, WindowCache, field_layout, field_views, fields_to_batch


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
        return fields_to_batch(self.reader.read(indices))

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


def _as_is(batch: tuple[int, int, int]) -> tuple[int, int, int]:
    """The DataLoader's collate_fn: ``__getitems__`` already returns the whole batch (where it lies)."""
    return batch


class _SlotWindows(Dataset):
    """What a DataLoader worker reads: each batch into the worker's next slot of a ring in shared memory.

    ``slots`` ``(workers, K, bytes)`` uint8 and ``busy`` ``(workers, K)`` int32 are shared memory
    made before the workers start. A worker fills its slot ``k`` once the training process has
    copied the slot's last batch out (``busy == 0``) and returns only ``(worker, k, n)``: a fresh
    shared-memory block per batch (the DataLoader's way) costs a file, a mapping and their page
    faults in both processes, several times the read itself.
    """

    def __init__(self, windows: CachedWindows, slots: torch.Tensor, busy: torch.Tensor):
        self.windows, self.slots, self.busy = windows, slots, busy
        self.count = 0  # batches this worker has read (each worker counts in its own copy)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitems__(self, indices: Sequence[int]) -> tuple[int, int, int]:
        worker, k = get_worker_info().id, self.count % self.slots.shape[1]
        self.count += 1
        busy = self.busy.numpy()
        while busy[worker, k]:  # a safeguard: the DataLoader never runs this far ahead (see WindowLoader)
            time.sleep(1e-4)
        self.windows.reader.read(indices, self.slots[worker, k].numpy())
        busy[worker, k] = 1
        return worker, k, len(indices)


class WindowLoader:
    """Iterates one :class:`AgentBatch` per list of indices ``sampler`` gives (it needs a
    ``batch_size``), in its order: read in the training process (``workers=0``) or by ``workers``
    DataLoader processes, each ``PREFETCH`` batches ahead.

    Workers read into reused shared-memory slots (:class:`_SlotWindows`); the training process
    copies each batch out of its slot into memory of its own, so a batch stays valid however long
    it is kept, then frees the slot.
    """

    PREFETCH = 2

    def __init__(self, windows: Windows, sampler: Sampler, workers: int):
        if workers and not isinstance(windows, CachedWindows):
            raise TypeError("WindowLoader: only CachedWindows are read by workers")
        self.windows, self.sampler, self.workers = windows, sampler, int(workers)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[AgentBatch]:
        if not self.workers:
            for indices in self.sampler:
                yield self.windows.read(indices)
            return
        dtype = self.windows.reader.dtype
        # K = PREFETCH + 1 slots per worker: the DataLoader hands a worker at most PREFETCH batches beyond
        # the one being copied out. A ring per iteration: workers of an abandoned one keep theirs.
        slots = torch.empty((self.workers, self.PREFETCH + 1, field_layout(dtype, self.sampler.batch_size)[1]),
                            dtype=torch.uint8).share_memory_()
        busy = torch.zeros(slots.shape[:2], dtype=torch.int32).share_memory_()
        loader = DataLoader(_SlotWindows(self.windows, slots, busy), batch_sampler=self.sampler, collate_fn=_as_is,
                            num_workers=self.workers, prefetch_factor=self.PREFETCH)
        slot_bytes, busy_flags = slots.numpy(), busy.numpy()
        for worker, k, n in loader:
            own = slot_bytes[worker, k, :field_layout(dtype, n)[1]].copy()
            busy_flags[worker, k] = 0  # the worker may refill it
            yield fields_to_batch(field_views(own, dtype, n))


def make_loader(windows: Windows, sampler: Sampler, workers: int = 0) -> WindowLoader:
    """The :class:`WindowLoader` of ``windows`` in ``sampler``'s order, read by ``workers`` processes.

    Windows held in memory are read in the training process whatever ``workers`` says (copying
    them to workers would only cost).
    """
    return WindowLoader(windows, sampler, workers if isinstance(windows, CachedWindows) else 0)


__all__ = ["Windows", "InMemoryWindows", "CachedWindows", "StepBatchSampler", "step_indices", "WindowLoader",
           "make_loader"]
