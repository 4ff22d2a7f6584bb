"""What the models the trainer builds share (the Pengi model, :mod:`pengi_kit.pretraining`'s
tagger and CLAP), beside their components: :class:`Composite`, components in slots of which
some are frozen, and :class:`Projection`, the head that maps an encoder's embedding into the
shared space (Microsoft CLAP's ``Projection``; its parameter names, ``linear1``/``linear2``/
``layer_norm``, are the checkpoints' names; CLAP folders use it too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Composite", "Projection"]


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


class Composite(nn.Module):
    """A model whose components sit in named slots (``audio_encoder``, ``lm`` ...), some frozen."""

    frozen: list[str]

    def set_trainable(self, flags: dict[str, bool]) -> None:
        """Freeze or unfreeze each slot's component; everything else (heads, projections) trains."""
        self.requires_grad_(True)
        self.frozen = [slot for slot, trainable in flags.items() if not trainable and getattr(self, slot, None)]
        for slot in self.frozen:
            getattr(self, slot).requires_grad_(False)

    def train(self, mode: bool = True) -> "Composite":
        """Frozen components stay in eval mode: no dropout, no batch-norm statistics drift."""
        super().train(mode)
        for slot in self.frozen:
            getattr(self, slot).eval()
        return self

    def silent_clips(self, n: int) -> torch.Tensor:
        """``n`` silent clips on the model's device, at its ``sample_rate`` and ``clip_seconds``
        (10 s where the encoder takes any length): made-up inputs for ``example_inputs``."""
        device = next(self.parameters()).device
        return torch.zeros(n, int(self.sample_rate * (self.clip_seconds or 10.0)), device=device)
