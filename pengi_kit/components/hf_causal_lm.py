"""Causal LMs of the GPT-2 family through transformers."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

from pengi_kit.components._hf import build_hf


class HFCausalLM(nn.Module):
    """Wraps a transformers causal LM behind the ``CausalLM`` contract.

    The wrapped model lives in ``self.model`` (state-dict keys ``model.transformer.*``,
    ``model.lm_head.*``), the tokenizer in ``self.tokenizer``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        # transformers renamed the KV-cache argument and output field from past_key_values to cache
        # (the old name now warns on every call); use whichever this installed version takes
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.hidden_size = int(model.config.hidden_size)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                else tokenizer.eos_token_id)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LM only "
                             f"{model.get_input_embeddings().num_embeddings} embeddings")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                past_key_values: Any = None, position_ids: torch.Tensor | None = None,
                use_cache: bool = False, logits_to_keep: int = 0) -> tuple[torch.Tensor, Any]:
        """``logits_to_keep=n`` computes logits for the last n positions only (0: all), as
        decoding needs just the last one after a long prefix."""
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache or past_key_values is not None, logits_to_keep=logits_to_keep,
                         **{self._cache_name: past_key_values})
        return out.logits, out[self._cache_name] if self._cache_name in out else None

    def new_cache(self, max_length: int, rows: int | None = None) -> Any:
        """An empty KV cache with room for ``max_length`` positions, written in place (no
        growing by concatenation) and reordered by :meth:`reorder_cache` without moving
        positions that every reordered row shares.

        With ``rows``, a static cache: ``rows`` x ``max_length`` for the whole search, so each
        one-token step has the same shapes (what CUDA graphs and ``torch.compile`` need); its
        attention mask must then cover all ``max_length`` positions."""
        n = self.model.config.num_hidden_layers
        if rows is not None:
            return Cache(layers=[_StaticLayer(max_length, rows) for _ in range(n)])
        return Cache(layers=[_BufferLayer(max_length) for _ in range(n)])

    def reorder_cache(self, past_key_values: Any, beam_idx: torch.Tensor, keep_first: int = 0) -> Any:
        """Rows ``beam_idx`` of the cache. ``keep_first``: positions before it are equal in
        each row and its source (the shared prefix of a clip's beams) and stay in place."""
        layers = getattr(past_key_values, "layers", [])
        if layers and all(isinstance(layer, (_BufferLayer, _StaticLayer)) for layer in layers):
            for layer in layers:
                layer.select(beam_idx, keep_first)
        else:
            past_key_values.reorder_cache(beam_idx)
        return past_key_values


class _BufferLayer(DynamicLayer):
    """A cache layer preallocated to ``capacity`` positions; ``keys``/``values`` are views of
    the filled part. Appending writes in place, and beam reordering moves only the
    positions the beams do not share (a growing cache would copy all of it twice per step:
    once to reorder, once to append)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        rows, heads, _, dim = key_states.shape
        self._k = key_states.new_empty(rows, heads, self.capacity, dim)
        self._v = value_states.new_empty(rows, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"KV cache full: {end} positions, room for {self.capacity}")
        self._k[:, :, self.length: end] = key_states
        self._v[:, :, self.length: end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def select(self, rows: torch.Tensor, keep_first: int = 0) -> None:
        if not self.is_initialized or self.length == 0:
            return
        rows = rows.to(self._k.device)
        filled = slice(0, self.length)
        if keep_first and rows.numel() == self._k.shape[0]:  # same rows; only the tail changes order
            filled = slice(keep_first, self.length)
            self._k[:, :, filled] = self._k[rows, :, filled]
            self._v[:, :, filled] = self._v[rows, :, filled]
        else:
            k, v = self._k, self._v
            self._k = k.new_empty(rows.numel(), *k.shape[1:])
            self._v = v.new_empty(rows.numel(), *v.shape[1:])
            self._k[:, :, filled] = k[rows, :, filled]
            self._v[:, :, filled] = v[rows, :, filled]
        self._views()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.select(beam_idx)


class _StaticLayer(StaticLayer):
    """A cache layer of fixed shape (rows, heads, capacity, dim) for the whole search, written
    in place at a position held in a tensor (transformers' ``StaticLayer``), so a one-token
    step has static shapes. Positions not yet written are hidden by the causal mask and the
    attention mask. A search with fewer live rows than ``rows`` keeps them first; the rows
    after them hold copies that nobody reads."""

    def __init__(self, capacity: int, rows: int) -> None:
        super().__init__(capacity)
        self.rows = rows

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # sized for all rows even when the prefix runs on fewer (one per clip, not per beam)
        super().lazy_initialization(key_states[:1].expand(self.rows, -1, -1, -1),
                                    value_states[:1].expand(self.rows, -1, -1, -1))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, length = key_states.shape[0], key_states.shape[-2]
        if n == self.rows:
            return super().update(key_states, value_states)
        # the (uncompiled) prefix pass over the first n rows
        position = torch.arange(length, device=self.device) + self.cumulative_length
        self.cumulative_length.add_(length)
        self.keys[:n].index_copy_(2, position, key_states)
        self.values[:n].index_copy_(2, position, value_states)
        return self.keys[:n], self.values[:n]

    def select(self, rows: torch.Tensor, keep_first: int = 0) -> None:
        """Rows ``rows`` first, in place (the buffers keep their address); fewer rows than
        the cache holds are padded with row 0."""
        if not self.is_initialized:
            return
        rows = rows.to(self.device)
        if rows.numel() < self.rows:
            rows = torch.cat([rows, rows.new_zeros(self.rows - rows.numel())])
        for buffer in (self.keys, self.values):
            buffer[:, :, keep_first:] = buffer[rows, :, keep_first:]

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.select(beam_idx)


def gpt2(
    pretrained: str | None = "gpt2",
    tokenizer: str | None = None,
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    n_positions: int | None = None,
    dropout: float | None = None,
) -> HFCausalLM:
    """GPT-2 family LM.

    ``pretrained``: a hub id (``gpt2``, ``distilgpt2``, ``gpt2-medium`` ...) or a local
    directory (an architecture-only one builds the config without weights, see
    :mod:`pengi_kit.sources`); weights and tokenizer come from there. With ``pretrained = ""`` a fresh
    model is built from the size arguments (defaults: GPT-2 base) with ``tokenizer``
    (``"byte"`` by default: offline, one token per byte; or a hub id / local path).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    model, tok = build_hf(GPT2LMHeadModel, GPT2Config, pretrained, tokenizer, "gpt2",
                          dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                               **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), dropout)))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # GPT-2 has none; padding is masked out anyway
    return HFCausalLM(model, tok)
