"""Mapping networks: an embedding (or a token sequence, or an audio encoder's frames) -> k
prefix vectors for the LM.

Module and parameter names follow the Pengi/ClipCap reference (``linear``,
``prefix_const``, ``transformer.layers.N.{norm1,attn.to_queries,attn.to_keys_values,
attn.project,norm2,mlp.fc1,mlp.fc2}``; ``model.0``/``model.2`` for the MLP) so that
published checkpoints load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"mapper width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.to_queries = nn.Linear(dim, dim, bias=bias)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=bias)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q = self.to_queries(x).view(b, n, h, c // h).transpose(1, 2)
        k, v = self.to_keys_values(x).view(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
        mask = None if key_padding is None else ~key_padding[:, None, None, :]  # True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.project(out.transpose(1, 2).reshape(b, n, c))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_padding)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(dim, num_heads, mlp_ratio) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_padding)
        return x


class TransformerMapper(nn.Module):
    """k input tokens (a linear map of the embedding, or a token sequence) followed by k
    learned constants go through a transformer; the constants' outputs are the prefix.

    ``sequence=True`` is the variant without a text encoder: the input is already a
    (B, k, out_dim) sequence (the LM's own embeddings of the prompt), so there is no
    linear. ``mask_padding`` hides padded prompt positions from attention; the published
    Pengi checkpoints were trained without that mask, so their importer turns it off.
    """

    def __init__(self, in_dim: int, out_dim: int, prefix_length: int = 40, num_layers: int = 4,
                 num_heads: int = 8, mlp_ratio: float = 2.0, sequence: bool = False,
                 mask_padding: bool = True) -> None:
        super().__init__()
        self.prefix_length, self.out_dim = prefix_length, out_dim
        self.accepts_sequence, self.mask_padding = sequence, mask_padding
        if not sequence:
            self.linear = nn.Linear(in_dim, prefix_length * out_dim)
        elif in_dim != out_dim:
            raise ValueError(f"a sequence mapper takes LM embeddings: in_dim {in_dim} must equal out_dim {out_dim}")
        self.transformer = Transformer(out_dim, num_heads, num_layers, mlp_ratio)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, k = x.shape[0], self.prefix_length
        if self.accepts_sequence:
            x, mask = _pad_to(x, mask, k)
        else:
            x, mask = self.linear(x).view(b, k, self.out_dim), None
        tokens = torch.cat([x, self.prefix_const.expand(b, -1, -1)], dim=1)
        key_padding = None
        if mask is not None and self.mask_padding:
            key_padding = torch.cat([mask == 0, mask.new_zeros(b, k, dtype=torch.bool)], dim=1)
        return self.transformer(tokens, key_padding)[:, k:]


def _pad_to(x: torch.Tensor, mask: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    length = x.shape[1]
    if length > k:
        raise ValueError(f"prompt of {length} tokens is longer than the mapper's prefix_length {k}")
    if length < k:
        x = F.pad(x, (0, 0, 0, k - length))
        mask = F.pad(mask if mask is not None else x.new_ones(x.shape[0], length), (0, k - length))
    return x, mask


class MLPMapper(nn.Module):
    """ClipCap's MLP: in -> k*d/2 -> k*d, tanh between; no sequence input."""

    accepts_sequence = False

    def __init__(self, in_dim: int, out_dim: int, prefix_length: int = 40) -> None:
        super().__init__()
        self.prefix_length, self.out_dim = prefix_length, out_dim
        hidden = out_dim * prefix_length
        self.model = nn.Sequential(nn.Linear(in_dim, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, hidden))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x).view(x.shape[0], self.prefix_length, self.out_dim)


class QFormerLayer(nn.Module):
    """Pre-norm: the queries attend to each other, then to the frames, then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, q: torch.Tensor, frames: torch.Tensor, ignore: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(q)
        q = q + self.self_attn(x, x, x, need_weights=False)[0]
        q = q + self.cross_attn(self.norm2(q), frames, frames, key_padding_mask=ignore, need_weights=False)[0]
        return q + self.mlp(self.norm3(q))


class QFormerMapper(nn.Module):
    """k learned queries read a sequence (an audio encoder's frames, with its mask) through
    cross-attention layers, as BLIP-2's and SALMONN's Q-Former do: a fixed k tokens however long
    the clip. One embedding (B, in_dim) is read as a sequence of one."""

    accepts_sequence = True

    def __init__(self, in_dim: int, out_dim: int, prefix_length: int = 32, num_layers: int = 2,
                 num_heads: int = 8, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if out_dim % num_heads:
            raise ValueError(f"qformer width {out_dim} is not divisible by num_heads={num_heads}")
        self.prefix_length, self.out_dim = prefix_length, out_dim
        self.input = nn.Linear(in_dim, out_dim)
        self.queries = nn.Parameter(torch.randn(prefix_length, out_dim) * 0.02)
        self.layers = nn.ModuleList(QFormerLayer(out_dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        frames = self.input(x if x.dim() == 3 else x[:, None])
        ignore = None if mask is None or x.dim() == 2 else mask == 0
        q = self.queries.expand(len(frames), -1, -1)
        for layer in self.layers:
            q = layer(q, frames, ignore)
        return self.norm(q)


class DownsampleMapper(nn.Module):
    """Frames (B, T, in_dim) with their mask -> one token per ``factor`` frames (B, ceil(T/factor),
    out_dim) and the tokens' mask: each group of frames stacked, then an MLP to the LM's width
    (SLAM-LLM's projector; Qwen2-Audio pools by 2). The number of audio tokens follows the clip's
    length. Masked frames are zeroed first, so a clip's tokens do not depend on its batch."""

    accepts_sequence = True
    variable_length = True
    prefix_length = 0  # no fixed number of tokens

    def __init__(self, in_dim: int, out_dim: int, factor: int = 4, hidden: int = 2048) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"downsample: factor must be a positive integer, got {factor}")
        self.factor, self.out_dim = factor, out_dim
        self.mlp = nn.Sequential(nn.Linear(factor * in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = x if x.dim() == 3 else x[:, None]
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device) if mask is None else mask.long()
        pad = -x.shape[1] % self.factor
        x = F.pad(x * mask[..., None].to(x.dtype), (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad))
        b, t, d = x.shape
        tokens = self.mlp(x.reshape(b, t // self.factor, self.factor * d))
        return tokens, mask.reshape(b, t // self.factor, self.factor).amax(-1)


def transformer(in_dim: int, out_dim: int, prefix_length: int = 40, num_layers: int = 4,
                num_heads: int = 8, mlp_ratio: float = 2.0, sequence: bool = False,
                mask_padding: bool = True) -> TransformerMapper:
    """Pengi's mapper: 4 layers, 8 heads, MLP ratio 2, ReLU, no q/kv bias, k = 40."""
    return TransformerMapper(in_dim, out_dim, prefix_length, num_layers, num_heads, mlp_ratio,
                             sequence, mask_padding)


def mlp(in_dim: int, out_dim: int, prefix_length: int = 40) -> MLPMapper:
    """ClipCap's MLP mapper (the paper's MLP ablation)."""
    return MLPMapper(in_dim, out_dim, prefix_length)


def qformer(in_dim: int, out_dim: int, prefix_length: int = 32, num_layers: int = 2, num_heads: int = 8,
            mlp_ratio: float = 2.0) -> QFormerMapper:
    """A Q-Former: ``prefix_length`` learned queries over a frame encoder's output (Whisper)."""
    return QFormerMapper(in_dim, out_dim, prefix_length, num_layers, num_heads, mlp_ratio)


def downsample(in_dim: int, out_dim: int, factor: int = 4, hidden: int = 2048) -> DownsampleMapper:
    """Stack ``factor`` frames, MLP to the LM's width: as many audio tokens as the clip needs."""
    return DownsampleMapper(in_dim, out_dim, factor, hidden)
