"""Where training runs: the device, and the process group under torchrun (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import MissingDependencyError, S2SDError

TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")  # what env:// initialisation reads


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # the process group's (gloo, nccl); None when not launched by torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def joined(self) -> bool:
        """In a process group: the step runs through DistributedDataParallel, as it does with more processes."""
        return self.backend is not None


def init_distributed(cuda: bool) -> Distributed:
    """Join the torchrun process group if there is one (gloo on CPU, nccl on GPU), also with a single process:
    ``torchrun --nproc_per_node 1`` then runs DDP over NCCL on one GPU, as it would on several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)  # nccl needs each process bound to its own GPU first
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Distributed(dist.get_rank(), world_size, local_rank, str(dist.get_backend()))


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` takes this process's GPU when CUDA works, else the CPU."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependencyError(
            f"--device {requested}: torch sees no CUDA GPU (torch.cuda.is_available() is False); use --device cpu"
        )
    if requested != "cpu" and not requested.startswith("cuda"):
        raise S2SDError(f"invalid --device {requested!r}; choose one of: auto, cpu, cuda, cuda:N")
    return torch.device(requested)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
