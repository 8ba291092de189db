"""Data-parallel training under ``torchrun``: the same VAE/diffusion loop on several processes.

``torchrun --nproc-per-node 2 -m blm_gym.cli train vae --set ...`` starts one process per GPU
(or CPU worker); each reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment
(set by torchrun), joins the process group (``nccl`` on GPU, ``gloo`` on CPU), trains on its own
shard of the training windows and averages gradients with the others before every optimizer
step, so all ranks hold identical weights. Only rank 0 validates and writes the checkpoint and
the CSV log. Without torchrun (no ``WORLD_SIZE``, or 1) every helper here is a no-op.

Semantics: ``batch_size`` is per rank (the effective batch is ``world_size x batch_size``). Every
rank reads only its own windows (:func:`shard_range`: every ``world_size``-th one), drawn in the
order of :class:`blm_gym.train.loader.StepBatchSampler` (a function of the seed and the step);
all ranks share the noise generator state (seeded alike, saved once by rank 0), so a run resumes
exactly with the same number of ranks. The on-disk window caches are built by the first rank that
gets to them; the others wait on the cache's lock and read what it built.
Averaging gradients by hand (one all-reduce of a flat buffer) rather than wrapping the model in
``DistributedDataParallel``: the losses call model methods (``vae_losses``, ``diffusion_loss``),
not ``forward``, which DDP's hooks need.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from blm_gym.models.batch import AgentBatch


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; torchrun sets it, "
                         "unset it to train in a single process") from None


def init_from_env(device: torch.device | str = "cpu") -> DistContext:
    """Join the process group described by torchrun's env vars (idempotent); single process if unset.

    On CUDA, binds this process to GPU ``LOCAL_RANK`` (so ``"cuda"`` means that GPU from here on).
    """
    ctx = DistContext(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if not ctx.enabled or dist.is_initialized():
        return ctx
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if ctx.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                               "start at most one process per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    atexit.register(dist.destroy_process_group)
    return ctx


def setup_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """Move ``model`` to this rank's device and copy rank 0's weights and buffers to every rank."""
    if not ctx.enabled:
        return model
    if next(model.parameters()).device.type == "cuda":
        model.to(torch.device("cuda", ctx.local_rank))
    with torch.no_grad():
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
    return model


def shard_range(num_windows: int, ctx: DistContext) -> range:
    """Indices of this rank's windows among ``num_windows``: every ``world_size``-th one from
    ``rank``, all ranks with the same number (``range(num_windows)`` in a single process)."""
    if not ctx.enabled:
        return range(num_windows)
    n = num_windows - num_windows % ctx.world_size
    if n == 0:
        raise ValueError(f"{num_windows} training window(s) for {ctx.world_size} ranks: use fewer processes "
                         "or more data (a smaller window_stride)")
    return range(ctx.rank, n, ctx.world_size)


def shard(batch: AgentBatch, ctx: DistContext) -> AgentBatch:
    """This rank's windows of an in-memory batch (:func:`shard_range`)."""
    if not ctx.enabled:
        return batch
    r = shard_range(batch.batch_size, ctx)
    return batch.index(torch.arange(r.start, r.stop, r.step))


def average_gradients(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """Replace every gradient by its mean over the ranks (missing gradients count as zeros)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        p.grad = flat[offset: offset + p.numel()].view_as(p)
        offset += p.numel()
