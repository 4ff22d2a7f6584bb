"""The contract each kind of component fulfils.

Every registered component, built-in or third-party, is an ``nn.Module`` that also
satisfies one of these protocols. ``pengi_kit.testing`` checks them at run time.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

KINDS = ("audio_encoder", "text_encoder", "mapper", "causal_lm")


@runtime_checkable
class AudioEncoder(Protocol):
    """Waveform (B, T) float in [-1, 1] at ``sample_rate`` -> embedding (B, embed_dim).

    ``clip_seconds`` is the clip length the encoder was built for (the data pipeline
    crops or repeat-pads to it); None means any length.
    """

    sample_rate: int
    clip_seconds: float | None
    embed_dim: int

    def forward(self, waveform: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Token ids (B, L) and mask -> pooled embedding (B, embed_dim)."""

    embed_dim: int

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]: ...

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Mapper(Protocol):
    """Built from (in_dim, out_dim, prefix_length, ...).

    Input (B, in_dim) -> prefix (B, prefix_length, out_dim). A mapper with
    ``accepts_sequence = True`` also takes (B, L, in_dim) plus a (B, L) mask, as the
    variant without a text encoder needs.
    """

    prefix_length: int
    accepts_sequence: bool

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class CausalLM(Protocol):
    """A decoder-only LM driven by input embeddings, with a KV cache.

    ``forward(inputs_embeds, attention_mask, past_key_values=None, position_ids=None)``
    returns ``(logits, past_key_values)``; the cache is opaque to callers except
    through ``reorder_cache(past, beam_idx)``.
    """

    hidden_size: int
    tokenizer: Any
    eos_token_id: int
    pad_token_id: int

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]: ...

    def reorder_cache(self, past_key_values: Any, beam_idx: torch.Tensor) -> Any: ...


PROTOCOLS = {
    "audio_encoder": AudioEncoder,
    "text_encoder": TextEncoder,
    "mapper": Mapper,
    "causal_lm": CausalLM,
}
