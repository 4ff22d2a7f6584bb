"""Optimiser and learning-rate schedule from the recipe's [optim] table."""
from __future__ import annotations

import math
from typing import Any

import torch


def build_optimizer(params: list[torch.nn.Parameter], optim: dict[str, Any], fused: bool = False) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    kwargs = {"fused": True} if fused else {}
    return cls(params, lr=optim["lr"], betas=tuple(optim["betas"]), weight_decay=optim["weight_decay"], **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: dict[str, Any], total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then linear decay to zero, cosine decay, or constant."""
    warmup, schedule = optim["warmup_steps"], optim["schedule"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total_steps - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
