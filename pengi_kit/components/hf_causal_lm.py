"""Causal LMs through transformers: any architecture with a causal-LM head (GPT-2, Llama and
SmolLM2, Qwen2/Qwen3, Gemma, Phi-3, OPT ...), optionally with a chat template around the
prefix and LoRA adapters (peft) on a frozen base.

:func:`causal_lm` is the generic component; :func:`gpt2` is its GPT-2 preset with the
arguments and state-dict keys (``model.transformer.*``, ``model.lm_head.*``) of earlier releases.
"""
from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

from pengi_kit.components._hf import LoRA, build_hf, inject_lora, lora_parameters, merge_lora, reject_config_args
from pengi_kit.errors import RecipeError, WeightsError

# LoRA's default targets: the attention projections (what LoRA's paper and most recipes adapt);
# other architectures get peft's own default for their model type
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3"),
                    ["q_proj", "k_proj", "v_proj", "o_proj"]),
}
# fresh models: size argument -> config attributes to try, first found wins (GPT-2's config maps the
# standard names to n_embd, n_layer ... itself)
SIZE_ATTRIBUTES = {
    "hidden_size": ("hidden_size",),
    "num_layers": ("num_hidden_layers",),
    "num_heads": ("num_attention_heads",),
    "num_kv_heads": ("num_key_value_heads",),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim"),
    "max_positions": ("max_position_embeddings",),
}
DROPOUT_ATTRIBUTES = ("attention_dropout", "hidden_dropout", "dropout", "activation_dropout", "resid_pdrop",
                      "embd_pdrop", "attn_pdrop")
# what the chat template is rendered with, then split at: a plain word survives templates that trim
CHAT_PLACEHOLDER = "PENGIKITPREFIX"
#: the chat template of an LM whose tokenizer has none (GPT-2, a tokenizer of `pengi-kit data
#: tokenizer`): "system: ... user: ... assistant: ...<end-of-text>", turns apart by a space, words a
#: word-level tokenizer keeps apart
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %} {% endif %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %} {% endif %}assistant:{% endif %}")


class HFCausalLM(nn.Module):
    """Wraps a transformers causal LM behind the ``CausalLM`` contract.

    The wrapped model lives in ``self.model`` (GPT-2: state-dict keys ``model.transformer.*``,
    ``model.lm_head.*``), the tokenizer in ``self.tokenizer``. ``chat_ids`` are the token ids a
    chat template puts before and after the prefix (``([], [])`` without one); ``lora`` adds
    adapters (:meth:`add_adapters`).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, chat_template: bool | str = False,
                 lora: LoRA | dict[str, Any] | None = None) -> None:
        super().__init__()
        if tokenizer.eos_token_id is None:
            raise WeightsError(f"the LM's tokenizer ({type(tokenizer).__name__}) has no end-of-text token, which ends "
                               "every target; use a tokenizer that has one (eos_token)")
        if tokenizer.pad_token is None:  # Llama-type tokenizers have none; padding is masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # prompts (no text encoder) pad after the text, whatever the hub file says
        self.model = model
        self.tokenizer = tokenizer
        # transformers renamed the KV-cache argument and output field from past_key_values to cache
        # (the old name now warns on every call); use whichever this installed version takes
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.hidden_size = int(model.config.get_text_config().hidden_size)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LM only "
                             f"{model.get_input_embeddings().num_embeddings} embeddings")
        self.chat_template = chat_template
        self.chat_ids: tuple[list[int], list[int]] = chat_ids(tokenizer, chat_template) if chat_template else ([], [])
        self.end_of_turn_id: int | None = None  # the chat layout's end of an answer (None: end-of-text)
        self.lora: LoRA | None = None
        if lora is not None:
            self.add_adapters(LoRA(**lora) if isinstance(lora, dict) else lora)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                past_key_values: Any = None, position_ids: torch.Tensor | None = None,
                use_cache: bool = False, logits_to_keep: int = 0) -> tuple[torch.Tensor, Any]:
        """``logits_to_keep=n`` computes logits for the last n positions only (0: all), as
        decoding needs just the last one after a long prefix. Without ``position_ids``, each
        token's position is the number of unmasked tokens before it (:func:`positions`).
        ``attention_mask=None`` with ``position_ids`` that start again at 0: sequences packed in
        one row, each attending only to itself (transformers' packed format)."""
        if position_ids is None:
            position_ids = positions(attention_mask, inputs_embeds.shape[1], past_key_values)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache or past_key_values is not None, logits_to_keep=logits_to_keep,
                         **{self._cache_name: past_key_values})
        return out.logits, out[self._cache_name] if self._cache_name in out else None

    def new_cache(self, max_length: int, rows: int | None = None, slots: bool = False) -> Any:
        """An empty KV cache with room for ``max_length`` positions, written in place (no
        growing by concatenation) and reordered by :meth:`reorder_cache` without moving
        positions that every reordered row shares.

        With ``rows``, a static cache: ``rows`` x ``max_length`` for the whole search, so each
        one-token step has the same shapes (what CUDA graphs and ``torch.compile`` need); its
        attention mask must then cover all ``max_length`` positions. With ``rows`` and ``slots``,
        a :class:`SlotCache` for a decode that rows join and leave (continuous batching)."""
        n = self.model.config.get_text_config().num_hidden_layers
        if rows is not None and slots:
            return SlotCache(n, rows, max_length)
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

    # ------------------------------------------------------------------ LoRA
    def add_adapters(self, lora: LoRA) -> None:
        """Inject LoRA adapters (peft) into the LM; its own weights are frozen by the model
        (``PengiModel.set_trainable``), the adapters train (:meth:`adapter_parameters`)."""
        model_type = self.model.config.model_type
        targets = list(lora.target_modules) or LORA_TARGETS.get(model_type) or _peft_default_targets(model_type)
        inject_lora(self.model, lora, targets, f"this {model_type} LM", "model.lm.lora.target_modules")
        self.lora = lora

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """The LoRA adapters' parameters (none without ``lora``)."""
        return lora_parameters(self.model)

    def merge_adapters(self) -> None:
        """Fold the adapters into the LM's weights (W + B A * alpha / rank) and remove them:
        the LM is then a plain transformers model with the keys it has without ``lora``."""
        merge_lora(self.model)
        self.lora = None

    def save_architecture(self, folder: Path) -> None:
        """Config and tokenizer (no weights) in ``folder``: what an architecture-only source holds."""
        self.model.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def positions(attention_mask: torch.Tensor, new: int, past: Any = None) -> torch.Tensor:
    """Position ids (B, ``new``) of the last ``new`` tokens: how many unmasked tokens come before
    each. ``attention_mask`` covers the cached and the new tokens (a static cache's also the
    positions after them, still 0). With no padding these are transformers' own positions;
    with padding before a row's tokens (left padding) they start at 0 where the row starts,
    which rotary models need to give the row the logits it has unpadded."""
    start = past.get_seq_length() if past is not None else 0
    columns = start + torch.arange(new, device=attention_mask.device)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, columns]


def template_text(tokenizer: Any, chat_template: bool | str | None) -> str:
    """The chat template to render with: ``chat_template`` where it is the template itself, else
    the tokenizer's own, else :data:`DEFAULT_CHAT_TEMPLATE`."""
    if isinstance(chat_template, str) and chat_template:
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    return own if isinstance(own, str) and own else DEFAULT_CHAT_TEMPLATE


def chat_ids(tokenizer: Any, chat_template: bool | str) -> tuple[list[int], list[int]]:
    """The token ids a chat template puts before and after one user turn, with the assistant's
    answer prompted (``add_generation_prompt``): the LM input is then ``head + prefix + tail +
    target``. ``chat_template``: True for the tokenizer's own template (the default one where it
    has none, :func:`template_text`), or a Jinja template."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_PLACEHOLDER}],
                                             chat_template=template_text(tokenizer, chat_template),
                                             tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - a Jinja error of the user's template
        raise RecipeError(f"model.lm.chat_template: cannot render it ({type(exc).__name__}: {exc}); fix the "
                          "template") from exc
    if text.count(CHAT_PLACEHOLDER) != 1:
        raise RecipeError("model.lm.chat_template: the template must show the user's message exactly once "
                          f"(it shows it {text.count(CHAT_PLACEHOLDER)} times); fix the template")
    head, tail = text.split(CHAT_PLACEHOLDER)
    return ([int(i) for i in tokenizer(head, add_special_tokens=False)["input_ids"]],
            [int(i) for i in tokenizer(tail, add_special_tokens=False)["input_ids"]])


def _peft_default_targets(model_type: str) -> list[str]:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if model_type not in DEFAULTS:
        raise RecipeError(f"model.lm.lora.target_modules: no default for the {model_type} architecture; name the "
                          "linear layers to adapt, e.g. target_modules = [\"q_proj\", \"v_proj\"]")
    return list(DEFAULTS[model_type])


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


class _SlotLayer(DynamicLayer):
    """One layer of a :class:`SlotCache`: (rows, heads, capacity, dim) buffers in which each row
    is filled to its own length."""

    def __init__(self, cache: "SlotCache") -> None:
        super().__init__()
        self.cache = cache

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        _, heads, _, dim = key_states.shape
        rows, capacity = self.cache.rows, self.cache.capacity
        self._k = key_states.new_zeros(rows, heads, capacity, dim)
        self._v = value_states.new_zeros(rows, heads, capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A step: one new position for each of the first n rows, written at the row's own length."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, columns, width = key_states.shape[0], self.cache.columns, self.cache.width
        rows = torch.arange(n, device=self.device)
        self._k[rows, :, columns] = key_states[:, :, 0]
        self._v[rows, :, columns] = value_states[:, :, 0]
        return self._k[:n, :, :width], self._v[:n, :, :width]

    def get_seq_length(self) -> int:
        return self.cache.width - 1  # before this step's token: transformers adds the query length

    def get_max_length(self) -> int:
        return self.cache.capacity


class SlotCache(Cache):
    """A KV cache for a decode that rows join and leave at step boundaries (continuous
    batching, :class:`pengi_kit.generation.Stream`): ``rows`` slots of ``capacity`` positions,
    each row filled from position 0 to its own length. The live rows are the first n slots;
    a step writes each one's token at its own length (:meth:`set_step`), and attention reads up
    to the longest row, the mask hiding what a row has not written. A row joins by copying its
    prefix from the cache of its prefill pass into a free slot (:meth:`admit`), beams of a row
    share a copy of its prefix (:meth:`copy`), and a row that leaves is replaced by the last live
    one (:meth:`copy` of that one row): no step copies the whole cache."""

    def __init__(self, layers: int, rows: int, capacity: int) -> None:
        self.rows, self.capacity = rows, capacity
        self.columns: torch.Tensor | None = None
        self.width = 1
        super().__init__(layers=[_SlotLayer(self) for _ in range(layers)])

    def set_step(self, columns: torch.Tensor, width: int) -> None:
        """The next forward writes row i's token at ``columns[i]``; attention reads ``width`` positions."""
        if width > self.capacity:
            raise ValueError(f"KV cache full: {width} positions, room for {self.capacity}")
        self.columns, self.width = columns, width

    def admit(self, prefill: Any, source_rows: list[int], slots: list[int], lengths: list[int]) -> None:
        """Copy each source row's last ``length`` positions of the ``prefill`` cache (a left-padded
        prefix pass) into positions 0.. of its slot."""
        for layer, source in zip(self.layers, prefill.layers):
            if not layer.is_initialized:
                layer.lazy_initialization(source.keys, source.values)
            width = source.keys.shape[2]
            for row, slot, length in zip(source_rows, slots, lengths):
                layer._k[slot, :, :length] = source.keys[row, :, width - length:]
                layer._v[slot, :, :length] = source.values[row, :, width - length:]

    def copy(self, sources: torch.Tensor, slots: torch.Tensor, start: int = 0, end: int | None = None) -> None:
        """Slots ``slots`` take positions ``start:end`` of slots ``sources`` (beams reordered past
        their shared prefix, a row moved into the slot of one that left)."""
        end = self.width if end is None else end
        for layer in self.layers:
            if layer.is_initialized:
                layer._k[slots, :, start:end] = layer._k[sources, :, start:end]
                layer._v[slots, :, start:end] = layer._v[sources, :, start:end]


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
        if not torch.compiler.is_compiling():
            # inputs at a fixed address but not guarded by it, so the next batch's cache reuses the
            # compiled step (torch before 2.10 guards them by default, and retraces)
            for buffer in (self.keys, self.values, self.cumulative_length):
                torch._dynamo.mark_static_address(buffer, guard=False)

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


def _build(model_cls: Any, config_cls: Any, pretrained: str | None, tokenizer: str | None, what: str,
           config_args: dict[str, Any], chat_template: bool | str, lora: LoRA | dict[str, Any] | None) -> HFCausalLM:
    model, tok = build_hf(model_cls, config_cls, pretrained, tokenizer, what, config_args)
    model.float()  # transformers loads bf16 hub weights as bf16; the prefix and autocast expect float32
    return HFCausalLM(model, tok, chat_template, lora)


def causal_lm(
    pretrained: str | None = "",
    tokenizer: str | None = None,
    architecture: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int | None = None,
    dropout: float | None = None,
    chat_template: bool | str = False,
    lora: LoRA | None = None,
) -> HFCausalLM:
    """Any transformers causal LM.

    ``pretrained``: a hub id (``HuggingFaceTB/SmolLM2-135M``, ``Qwen/Qwen2.5-0.5B``, ``gpt2`` ...)
    or a local folder saved with ``save_pretrained()`` (an architecture-only one builds the
    config without weights, see :mod:`pengi_kit.sources`); weights and tokenizer come from
    there. With ``pretrained = ""`` a fresh model of ``architecture`` (a transformers model
    type with a causal LM: ``gpt2``, ``llama``, ``qwen2``, ``qwen3``, ``gemma``, ``phi3``,
    ``opt`` ...) is built from the size arguments (unset: the architecture's defaults) with
    ``tokenizer`` (``"byte"`` by default; or a hub id / local path / ``"module:function"``).

    ``chat_template``: True wraps the prefix in the tokenizer's chat template (or, where it has
    none, :data:`DEFAULT_CHAT_TEMPLATE`) as a user turn followed by the assistant's turn; a string
    is the Jinja template itself. The chat layout (``model.layout = "chat"``) renders whole
    conversations with the same template. ``lora``: LoRA
    adapters on the frozen LM, the recipe table ``[model.lm.lora]`` (:class:`LoRA`): ``rank``
    (8), ``alpha`` (16), ``dropout`` (0.05), ``target_modules`` ([]: the attention projections,
    q/k/v/o_proj for Llama, Qwen, Mistral and Gemma, c_attn for GPT-2; else peft's default).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                 intermediate_size=intermediate_size, max_positions=max_positions, dropout=dropout)
    reject_config_args(pretrained, "causal-lm", architecture=architecture, **sizes)
    if pretrained:
        return _build(AutoModelForCausalLM, AutoConfig, pretrained, tokenizer, "causal-lm", {}, chat_template, lora)
    if not architecture:
        raise RecipeError("model.lm: causal-lm needs pretrained (a hub id or a local folder) or, for a fresh model, "
                          "architecture (e.g. architecture = \"llama\")")
    default = _default_config(architecture)
    return _build(AutoModelForCausalLM, lambda **kw: AutoConfig.for_model(architecture, **kw), "", tokenizer,
                  "causal-lm", _config_args(default, architecture, sizes), chat_template, lora)


def _default_config(architecture: str) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LMS

    if architecture not in CAUSAL_LMS:
        close = difflib.get_close_matches(architecture, list(CAUSAL_LMS), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "e.g. gpt2, llama, qwen2, qwen3, gemma, phi3, opt"
        raise RecipeError(f"model.lm.architecture: '{architecture}' is not a transformers model type with a causal "
                          f"LM; {hint}")
    return AutoConfig.for_model(architecture)


def _config_args(default: Any, architecture: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """The config arguments of a fresh model from the size arguments, in the names of the
    architecture's config; a size it has no field for is a one-line error."""
    given = {k: v for k, v in sizes.items() if v is not None and k != "dropout"}
    out: dict[str, Any] = {}
    for key, value in given.items():
        attribute = next((a for a in SIZE_ATTRIBUTES[key] if hasattr(default, a)), None)
        if attribute is None:
            raise RecipeError(f"model.lm.{key}: the {architecture} architecture has no such setting; remove it")
        out[attribute] = value
    if "num_heads" in given and "num_kv_heads" not in given and hasattr(default, "num_key_value_heads"):
        out["num_key_value_heads"] = given["num_heads"]  # no grouped-query attention unless asked for
    ffn = next((a for a in SIZE_ATTRIBUTES["intermediate_size"] if hasattr(default, a)), None)
    if "hidden_size" in given and "intermediate_size" not in given and ffn:  # the ratio of the hub models
        out[ffn] = 4 * given["hidden_size"]
    if ("hidden_size" in given or "num_heads" in given) and getattr(default, "head_dim", None):
        # Qwen3 and Gemma fix head_dim (128, 256) whatever the width: a small model keeps width / heads
        out["head_dim"] = given.get("hidden_size", default.hidden_size) // given.get("num_heads",
                                                                                      default.num_attention_heads)
    if "hidden_size" in given and hasattr(default, "word_embed_proj_dim"):  # OPT: no projection of the embeddings
        out["word_embed_proj_dim"] = given["hidden_size"]
    if sizes["dropout"] is not None:
        out.update(dict.fromkeys((a for a in DROPOUT_ATTRIBUTES if hasattr(default, a)), sizes["dropout"]))
    return out


def gpt2(
    pretrained: str | None = "gpt2",
    tokenizer: str | None = None,
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    n_positions: int | None = None,
    dropout: float | None = None,
    chat_template: bool | str = False,
    lora: LoRA | None = None,
) -> HFCausalLM:
    """GPT-2 family LM: :func:`causal_lm` with GPT-2's argument names and defaults.

    ``pretrained``: a hub id (``gpt2``, ``distilgpt2``, ``gpt2-medium`` ...) or a local
    directory (an architecture-only one builds the config without weights, see
    :mod:`pengi_kit.sources`); weights and tokenizer come from there. With ``pretrained = ""`` a fresh
    model is built from the size arguments (defaults: GPT-2 base) with ``tokenizer``
    (``"byte"`` by default: offline, one token per byte; or a hub id / local path).
    ``chat_template`` and ``lora`` as for :func:`causal_lm`.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    return _build(GPT2LMHeadModel, GPT2Config, pretrained, tokenizer, "gpt2",
                  dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                       **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), dropout)),
                  chat_template, lora)
