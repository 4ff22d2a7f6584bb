"""torch.distributed setup: one process or many (torchrun sets RANK/WORLD_SIZE)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pengi_kit.errors import PengiKitError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | None, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device this process trains on, or a one-line PengiKitError for a device that does not
    parse or is not there (checked before a model is built or a process group joined).

    ``None``: the GPU of the local rank when CUDA is available, else the CPU. With many
    processes each takes the GPU of its local rank, whatever index ``device`` names.
    """
    if device is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise PengiKitError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "" if torch.version.cuda else f" (this torch {torch.__version__} is built without CUDA)"
            raise PengiKitError(f"--device {device}: torch sees no CUDA GPU on this machine{build}; "
                                "use --device cpu")
        index = local_rank if world_size > 1 or dev.index is None else dev.index
        if index >= count:
            who = f"local rank {local_rank} needs" if world_size > 1 else f"--device {device} names"
            raise PengiKitError(f"{who} GPU {index}, but torch sees {count} GPU(s) (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    available = getattr(getattr(torch, dev.type, None), "is_available", None)
    if callable(available) and not available():
        raise PengiKitError(f"--device {device}: torch finds no {dev.type} device on this machine; use --device cpu")
    return dev


def setup(device: str | None = None) -> Dist:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); else one process.

    A bad ``device`` raises :class:`~pengi_kit.errors.PengiKitError` before anything starts.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local, world)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, dev)


def all_reduce_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
