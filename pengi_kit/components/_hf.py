"""Shared plumbing for components built on transformers: :func:`build_hf`, the one way a
model and its tokenizer are made from a hub id, a local folder, an architecture-only
folder or a fresh config; offline-aware loading; the byte-level tokenizer used by models
trained from scratch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pengi_kit.errors import RecipeError, WeightsError
from pengi_kit.options import option

BYTE_TOKENIZER = "byte"
EOS = "<|endoftext|>"


def byte_tokenizer():
    """A data-independent, offline tokenizer: one token per UTF-8 byte, plus end-of-text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   bos_token=EOS, unk_token=EOS)


def hf_load(loader: Callable[..., Any], source: str, what: str, **kwargs: Any) -> Any:
    """``loader(source)`` with an actionable one-line error when weights are unavailable."""
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        where = "local directory" if Path(source).exists() else "Hugging Face hub id"
        raise WeightsError(
            f"cannot load {what} '{source}' ({where}): {str(exc).splitlines()[0].rstrip('.')}. "
            f"Download it where the hub is reachable (`hf download {source}`) so it is in the "
            "Hugging Face cache (HF_HOME), or set `pretrained` to a local directory saved with "
            "save_pretrained()") from exc


def hf_model(model_cls: Any, source: str, what: str, **kwargs: Any) -> Any:
    """``model_cls.from_pretrained(source)``, or, for an architecture-only folder
    (config and tokenizer, no weights; see :mod:`pengi_kit.sources`), a randomly
    initialised ``model_cls`` of that config: the checkpoint that references the
    folder supplies every weight, so none is downloaded only to be overwritten."""
    from pengi_kit.sources import is_architecture_only

    if is_architecture_only(source):
        from transformers import AutoConfig

        config_cls = getattr(model_cls, "config_class", None) or AutoConfig  # an Auto class has none
        config = hf_load(config_cls.from_pretrained, source, f"{what} config")
        return instantiate(model_cls, config, **kwargs)
    return hf_load(model_cls.from_pretrained, source, what, **kwargs)


def instantiate(model_cls: Any, config: Any, **kwargs: Any) -> Any:
    """A randomly initialised ``model_cls`` of ``config``: a model class, or an Auto class
    (``AutoModelForCausalLM``), which picks the class from the config's model type."""
    if getattr(model_cls, "config_class", None) is None:
        return model_cls.from_config(config, **kwargs)
    return model_cls(config, **kwargs)


def load_tokenizer(source: str):
    """A tokenizer from ``"byte"``, a ``"module:function"`` that returns one, a hub id,
    or a local directory / tokenizer.json file."""
    import importlib
    import re

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if source == BYTE_TOKENIZER:
        return byte_tokenizer()
    if re.fullmatch(r"[\w.]+:[\w.]+", source):
        module, _, attr = source.partition(":")
        return getattr(importlib.import_module(module), attr)()
    if source.endswith(".json") and Path(source).is_file():
        return PreTrainedTokenizerFast(tokenizer_file=source)
    return hf_load(AutoTokenizer.from_pretrained, source, "tokenizer")


def reject_config_args(pretrained: str | None, component: str, **given: Any) -> None:
    """Architecture arguments only make sense without pretrained weights: no dead flags."""
    used = sorted(k for k, v in given.items() if v is not None)
    if pretrained and used:
        raise WeightsError(f"{component}: {', '.join(used)} only apply when pretrained is empty "
                           f"(the architecture comes from '{pretrained}'); remove them or the pretrained source")


def build_hf(model_cls: Any, config_cls: Any, pretrained: str | None, tokenizer: str | None, what: str,
             config_args: dict[str, Any], config_defaults: dict[str, Any] | None = None,
             **model_kwargs: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a transformers-backed component, in the spirit of timm's
    ``build_model_with_cfg``, from a hub id, a local folder, an architecture-only folder or a fresh config:

    - ``pretrained``, a hub id or a folder saved with ``save_pretrained()``: its weights;
    - ``pretrained``, an architecture-only folder (:mod:`pengi_kit.sources`): a randomly
      initialised model of its config (the checkpoint referencing it supplies every weight);
    - ``pretrained`` empty: a fresh ``config_cls`` of the ``config_args`` given (None: not
      given) over ``config_defaults``, sized to the tokenizer's vocabulary and special ids.
      A given ``hidden_size`` brings a 4x ``intermediate_size``, the ratio of the hub models.

    The tokenizer is ``tokenizer``, else ``pretrained``'s, else (fresh) the offline byte
    tokenizer. ``config_args`` are the architecture, so they are refused beside pretrained
    weights; ``model_kwargs`` go to the model class from every source. ``what`` is the
    component's name in error messages.

    >>> from transformers import GPT2Config, GPT2Model
    >>> model, tok = build_hf(GPT2Model, GPT2Config, "", None, "gpt2-text", {"n_layer": 1, "n_embd": 8, "n_head": 2})
    >>> model.config.n_layer, model.config.vocab_size == len(tok)
    (1, True)
    """
    reject_config_args(pretrained, what, **config_args)
    if pretrained:
        model = hf_model(model_cls, pretrained, f"{what} weights", **model_kwargs)
        return model, load_tokenizer(tokenizer or pretrained)
    tok = load_tokenizer(tokenizer or BYTE_TOKENIZER)
    given = {k: v for k, v in config_args.items() if v is not None}
    if "hidden_size" in given:
        given.setdefault("intermediate_size", 4 * given["hidden_size"])
    config = config_cls(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id, **{**(config_defaults or {}), **given})
    return instantiate(model_cls, config, **model_kwargs), tok


@dataclass(frozen=True)
class LoRA:
    """``[model.lm.lora]`` (or ``[model.audio_encoder.lora]``, Whisper): low-rank adapters (LoRA,
    through peft) on a frozen component. Only the adapters train (and the other trainable slots);
    checkpoints store the adapters, not the base, and ``pengi-kit export`` merges them in."""

    rank: int = option(8, "Rank r of each adapter.", ">= 1")
    alpha: float = option(16.0, "Adapter scale: its output is multiplied by alpha / rank.", "> 0")
    dropout: float = option(0.05, "Dropout on each adapter's input while training.", "[0, 1)")
    target_modules: list[str] = option(
        [], "Names (suffixes) of the linear layers to adapt; [] means the attention projections (gpt2: "
            "c_attn; llama, qwen2/3, mistral, gemma: q/k/v/o_proj; whisper: q/k/v/out_proj), else peft's "
            "default for the architecture.")


def inject_lora(model: Any, lora: LoRA, targets: list[str], what: str, key: str) -> None:
    """Inject LoRA adapters (peft) into ``model``'s linear layers named by ``targets`` (suffixes);
    ``what`` and ``key`` name the model and the recipe key in the error for a target it lacks."""
    from peft import LoraConfig, inject_adapter_in_model
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    linears = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    targeted = {name.rpartition(".")[2] for name in linears if name.endswith(tuple(targets))}
    missing = [t for t in targets if t.rpartition(".")[2] not in targeted]
    if missing:
        found = sorted({name.rpartition(".")[2] for name in linears})
        raise RecipeError(f"{key}: {', '.join(missing)} is not a linear layer of {what}; choose among "
                          f"{', '.join(found)}")
    # GPT-2's Conv1D stores its weight transposed (in x out); peft must be told so
    conv = any(isinstance(m, Conv1D) for n, m in model.named_modules() if n.endswith(tuple(targets)))
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        fan_in_fan_out=conv)
    inject_adapter_in_model(config, model)


def lora_parameters(model: Any) -> Iterator[Any]:
    """The LoRA adapters' parameters of ``model``."""
    return (p for name, p in model.named_parameters() if "lora_" in name)


def merge_lora(model: Any) -> None:
    """Fold ``model``'s adapters into its weights (W + B A * alpha / rank) and remove them: its
    keys are then those it has without adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
