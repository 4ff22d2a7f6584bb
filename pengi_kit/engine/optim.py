"""Optimiser and learning-rate schedule from the recipe's [optim] table."""
from __future__ import annotations

import math
from typing import Any

import torch


# learned constants that are positions or prefixes rather than weights: no decay, as embeddings
NO_DECAY_NAMES = ("pos_embed", "position", "prefix_const", "cls_token", "logit_scale")


def decay_groups(model: torch.nn.Module, decay_all: bool = False) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters that weight decay applies to, and of those it spares: as
    the field does (GPT-2, CLIP, timm), biases, norms (every parameter of fewer than two
    dimensions), embeddings (``nn.Embedding``) and learned positions and prefix constants are
    spared, unless ``decay_all``."""
    embeddings = {f"{name}.{p}" if name else p for name, module in model.named_modules()
                  if isinstance(module, torch.nn.Embedding) for p, _ in module.named_parameters(recurse=False)}
    decay, spare = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or name in embeddings or any(part in name for part in NO_DECAY_NAMES)
        (spare if exempt and not decay_all else decay).append(name)
    return decay, spare


def build_optimizer(model: torch.nn.Module, optim: dict[str, Any], fused: bool = False) -> torch.optim.Optimizer:
    """Adam(W) over ``model``'s trainable parameters, weight decay on :func:`decay_groups`' first group."""
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    kwargs = {"fused": True} if fused else {}
    params = dict(model.named_parameters())
    decay, spare = decay_groups(model, optim.get("decay_all", False))
    groups = [{"params": [params[n] for n in names], "weight_decay": wd}
              for names, wd in ((decay, optim["weight_decay"]), (spare, 0.0)) if names]
    return cls(groups, lr=optim["lr"], betas=tuple(optim["betas"]), **kwargs)


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
