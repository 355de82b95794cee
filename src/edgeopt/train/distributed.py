"""Data-parallel helpers: one code path for one process and for ``torchrun`` launches.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; when ``WORLD_SIZE > 1`` the
Trainer initialises a process group (gloo on CPU, nccl on CUDA), wraps the model in
``DistributedDataParallel``, shards the train loader by rank and all-reduces metrics.
Only rank 0 writes files and logs.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from edgeopt.errors import ConfigError


@dataclasses.dataclass
class DistContext:
    """Where this process sits: rank, world size, device, and whether we own the group.

    Example:
        >>> ctx = setup_distributed("cpu")  # WORLD_SIZE unset: a single process
        >>> ctx.rank, ctx.world_size, ctx.is_main, str(ctx.device)
        (0, 1, True, 'cpu')
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # True when we called init_process_group (so we destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a float64 vector over ranks (no-op with one process). Shape kept: ``[K]``."""
        if not self.enabled:
            return values
        # gloo reduces CPU tensors, nccl CUDA tensors; metrics live on self.device.
        buf = values.to(self.device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.cpu()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cuda"`` without CUDA is a ConfigError.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA device is available; use device='cpu'")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def setup_distributed(device_pref: str = "auto") -> DistContext:
    """Read the torchrun environment and join (or reuse) the process group.

    Args:
        device_pref: ``TrainConfig.device``.

    Returns:
        A :class:`DistContext`; with ``WORLD_SIZE`` unset or 1 it is a single process.

    Example:
        >>> setup_distributed("cpu").world_size
        1
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device_pref))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device,
                       owns_group=owns)
