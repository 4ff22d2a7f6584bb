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

    An encoder with ``frames = True`` (Whisper) gives frames instead: ``forward(waveform,
    lengths)`` -> ``(frames (B, F, embed_dim), mask (B, F))``, ``lengths`` being each clip's
    samples in the zero-padded batch (None: all T). Plugins without the attribute are read as
    one embedding per clip, as before.
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


@runtime_checkable
class Trainable(Protocol):
    """What the one trainer (:mod:`pengi_kit.engine.trainer`) needs of a model: the Pengi model
    and the pretraining models (:mod:`pengi_kit.models.tagging`, :mod:`pengi_kit.models.clap`) alike;
    :class:`pengi_kit.models.base.Composite` gives the shared parts. The trainer reads nothing
    else of a model: no slot names, no input names, no concrete class.

    It follows ``sample_rate``/``clip_seconds`` when loading audio. Optional:
    ``export(out_dir) -> Path`` writes the folder users take away (an encoder folder, a CLAP
    folder) after training; ``validation_warning(metrics) -> str | None`` names a problem a
    validation shows (printed once a run); ``check_conversation(messages) -> str | None`` says why
    it cannot train on a conversation (the trainer leaves such rows out before training, reported)."""

    sample_rate: int
    clip_seconds: float | None
    text_targets: bool  # the loss is over target text an LM pads: the loader may bucket batches by its length

    def batch_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A collated batch -> ``forward``'s inputs: CPU tensors, every one batch-first."""

    def loss_units(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """How many terms ``loss_sum`` sums over (target tokens, clips): the trainer divides by
        their total over every process and micro-batch."""

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss_sum": ...}`` over this process's terms."""

    def validation_sums(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{metric: float64 [sum, count]}`` of one validation batch, ``valid_loss`` among them."""

    def example_inputs(self, n: int = 1) -> dict[str, torch.Tensor]:
        """Inputs of ``n`` made-up examples on the model's device (one backward on them finds
        the parameters the loss never reaches)."""

    def flops(self, inputs: dict[str, torch.Tensor]) -> float:
        """FLOPs of one training step (forward and backward) over ``inputs``, a function of their
        shapes (the trainer calls it once on made-up inputs before wrapping the model, then per
        step, for MFU)."""

    def lm_tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Positions an LM computes for ``inputs``, padding aside (tokens/s); None without an LM."""

    def set_trainable(self, flags: dict[str, bool]) -> None: ...
