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


def shard(model: torch.nn.Module, bf16: bool) -> torch.nn.Module:
    """FSDP2 (``fully_shard``) in place: each transformer block of the model's components (the
    classes a Hugging Face model lists in ``_no_split_modules``) is a unit of its own, gathered
    just before it runs and freed after; the rest (encoders, mappers, embeddings, head) is the
    root's unit. Parameters, gradients and optimiser state are sharded over the processes.

    ``bf16``: the blocks compute in bfloat16 with gradients reduced in float32 (FSDP's mixed
    precision); the root keeps float32 parameters under the trainer's autocast, so that audio
    front-ends and losses keep their precision."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    block_names = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    for block in [m for m in model.modules() if type(m).__name__ in block_names]:
        fully_shard(block, **({"mp_policy": policy} if policy else {}))
    return fully_shard(model)
