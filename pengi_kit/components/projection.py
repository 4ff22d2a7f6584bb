"""Pengi's projection head, shared by the Pengi model, CLAP folders and contrastive pretraining.

It maps an encoder's embedding into the shared space (Microsoft CLAP's ``Projection``;
its parameter names, ``linear1``/``linear2``/``layer_norm``, are the checkpoints' names).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Projection"]


class Projection(nn.Module):
    """Pengi's projection head: linear, GELU, linear, dropout, residual, LayerNorm."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x)
        return self.layer_norm(h + self.drop(self.linear2(F.gelu(h))))
