"""torch.distributed setup: one process or many (torchrun sets RANK/WORLD_SIZE)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from pengi_kit.devices import resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # a gloo group for the trainer's per-step flags on CPU tensors: reading them never waits
    # for the GPU (None: the default group, which is gloo already on the CPU)
    control: Any = field(default=None, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


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
    control = dist.new_group(backend="gloo") if world > 1 and use_cuda else None
    return Dist(rank, world, local, dev, control)


def all_reduce_sum(value: torch.Tensor, d: Dist, group: Any = None) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
