"""Shared plumbing for components built on transformers: offline-aware loading and
the byte-level tokenizer used by models trained from scratch."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pengi_kit.errors import WeightsError

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
        config = hf_load(model_cls.config_class.from_pretrained, source, f"{what} config")
        return model_cls(config, **kwargs)
    return hf_load(model_cls.from_pretrained, source, what, **kwargs)


def word_tokenizer(words: list[str]):
    """A closed-vocabulary tokenizer: one token per word (and per '?', ':' or ','), plus end-of-text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([EOS, "[UNK]", "?", ":", ",", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation("isolated")])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                   unk_token="[UNK]")


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
