"""Text encoders through transformers: CLIP text tower, RoBERTa, BERT and GPT-2.

BERT and the GPT-2 text tower exist for the Microsoft CLAP checkpoints (2022: BERT,
2023: GPT-2); RoBERTa with its pooler for LAION-CLAP (``pengi-kit import``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pengi_kit.components._hf import build_hf

POOLINGS = ("projection", "first", "pooler", "last", "msclap")
MSCLAP_PAD = "!"  # msclap's GPT-2 pad token (id 0), whose ids its pooling counts out


class HFTextEncoder(nn.Module):
    """Token ids -> one pooled embedding per text.

    ``pooling="projection"``: CLIP's pooled output through its text projection;
    ``pooling="first"``: the first token's last hidden state (RoBERTa's <s>, BERT's [CLS]);
    ``pooling="pooler"``: the model's pooler output (tanh of a dense layer over the
    first token; LAION-CLAP's RoBERTa); ``pooling="last"``: the last non-padding
    token's hidden state (a causal LM's end-of-text); ``pooling="msclap"``: the hidden
    state at Microsoft CLAP 2023's position, the number of ids other than the pad id
    minus one (msclap pads GPT-2 with ``'!'``, id 0, and counts the ids that are not 0,
    so each ``'!'`` of a text moves the position one token earlier).
    ``suffix`` is appended to every text before tokenising.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str, embed_dim: int, suffix: str = "") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.model, self.tokenizer, self.pooling, self.embed_dim = model, tokenizer, pooling, embed_dim
        self.suffix = suffix

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        texts = [t + self.suffix for t in texts]
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                                return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "projection":
            return out.text_embeds
        if self.pooling == "pooler":
            return out.pooler_output
        if self.pooling == "last":
            last = attention_mask.long().sum(-1).clamp(min=1) - 1
            return out.last_hidden_state[torch.arange(input_ids.shape[0], device=input_ids.device), last]
        if self.pooling == "msclap":  # as msclap's TextEncoder: torch.ne(ids, pad).sum(-1) - 1 (-1 wraps, as there)
            position = (input_ids != self.tokenizer.pad_token_id).sum(-1) - 1
            return out.last_hidden_state[torch.arange(input_ids.shape[0], device=input_ids.device), position]
        return out.last_hidden_state[:, 0]


def _eos_terminated(tokenizer: Any) -> Any:
    """The byte tokenizer adds no special tokens; CLIP pools at the end-of-text token."""
    from tokenizers import processors

    eos = tokenizer.eos_token
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)])
    return tokenizer


def clip_text(
    pretrained: str | None = "openai/clip-vit-base-patch16",
    tokenizer: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    projection_dim: int | None = None,
    max_positions: int | None = None,
) -> HFTextEncoder:
    """CLIP text tower (``CLIPTextModelWithProjection``); embedding = projected pooled output.

    With ``pretrained = ""`` a fresh tower is built from the size arguments with the
    offline byte tokenizer (or ``tokenizer``).
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    model, tok = build_hf(CLIPTextModelWithProjection, CLIPTextConfig, pretrained, tokenizer, "clip-text",
                          dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                               projection_dim=projection_dim, max_position_embeddings=max_positions))
    if not pretrained:
        _eos_terminated(tok)
    return HFTextEncoder(model, tok, "projection", int(model.config.projection_dim))


def _bidirectional(model_cls: Any, config_cls: Any, component: str, pretrained: str | None, tokenizer: str | None,
                   sizes: dict[str, int | None], pooling: str, **config: Any) -> HFTextEncoder:
    """A BERT-style tower; ``config``: the fresh config's values where the family differs from transformers'."""
    if pooling not in ("first", "pooler"):
        raise ValueError(f"{component}: pooling must be 'first' or 'pooler', got {pooling!r}")
    model, tok = build_hf(model_cls, config_cls, pretrained, tokenizer, component, sizes, config,
                          add_pooling_layer=pooling == "pooler")
    return HFTextEncoder(model, tok, pooling, int(model.config.hidden_size))


def roberta(
    pretrained: str | None = "roberta-base",
    tokenizer: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    pooling: str = "first",
) -> HFTextEncoder:
    """RoBERTa; embedding = the first token's last hidden state (``pooling="first"``) or
    the pooler's output (``"pooler"``: tanh(dense(<s>)), what LAION-CLAP uses)."""
    from transformers import RobertaConfig, RobertaModel

    sizes = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads)
    return _bidirectional(RobertaModel, RobertaConfig, "roberta", pretrained, tokenizer, sizes, pooling,
                          max_position_embeddings=514)


def bert(
    pretrained: str | None = "bert-base-uncased",
    tokenizer: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    pooling: str = "first",
) -> HFTextEncoder:
    """BERT; embedding = the [CLS] token's last hidden state (``"first"``, Microsoft
    CLAP 2022's choice) or the pooler's output (``"pooler"``)."""
    from transformers import BertConfig, BertModel

    sizes = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads)
    return _bidirectional(BertModel, BertConfig, "bert", pretrained, tokenizer, sizes, pooling)


def gpt2_text(
    pretrained: str | None = "gpt2",
    tokenizer: str | None = None,
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    n_positions: int | None = None,
    suffix: str = " <|endoftext|>",
    pooling: str = "last",
) -> HFTextEncoder:
    """GPT-2 as a text encoder (Microsoft CLAP 2023): ``suffix`` is appended to each
    text and the embedding is the last non-padding token's hidden state, i.e. the
    end-of-text token's. The default suffix is the reference's ``' <|endoftext|>'``
    (a space token, then end-of-text), which is what its weights were trained with.

    ``pooling="msclap"`` reproduces msclap exactly, texts with ``'!'`` included: the
    tokenizer gets ``'!'`` as its pad token the way msclap adds it (a special token,
    so a ``'!'`` is always its own token, id 0 in GPT-2), and the embedding is taken at
    the number of ids other than ``'!'`` minus one. For a text without ``'!'`` that is
    the end-of-text token, as with ``"last"``; each ``'!'`` moves it one token earlier
    ("Rain falls on a metal roof!" is pooled at the space before end-of-text).
    ``pengi-kit import ms-clap`` sets it for the 2023 model.
    """
    if pooling not in ("last", "msclap"):
        raise ValueError(f"gpt2-text: pooling must be 'last' or 'msclap', got {pooling!r}")
    from transformers import GPT2Config, GPT2Model

    model, tok = build_hf(GPT2Model, GPT2Config, pretrained, tokenizer, "gpt2-text",
                          dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions))
    if pooling == "msclap":
        tok.add_special_tokens({"pad_token": MSCLAP_PAD})  # as msclap's CLAPWrapper.load_clap
    elif tok.pad_token is None:
        tok.pad_token = tok.eos_token  # pooling follows the attention mask, so the pad id is irrelevant
    return HFTextEncoder(model, tok, pooling, int(model.config.hidden_size), suffix=suffix)
