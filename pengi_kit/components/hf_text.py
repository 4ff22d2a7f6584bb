"""Text encoders through transformers: CLIP text tower and RoBERTa."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pengi_kit.components._hf import BYTE_TOKENIZER, hf_load, load_tokenizer, reject_config_args


class HFTextEncoder(nn.Module):
    """Token ids -> one pooled embedding per text.

    ``pooling="projection"``: CLIP's pooled output through its text projection;
    ``pooling="first"``: the first token's last hidden state (RoBERTa's <s>).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str, embed_dim: int) -> None:
        super().__init__()
        self.model, self.tokenizer, self.pooling, self.embed_dim = model, tokenizer, pooling, embed_dim

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(list(texts), padding="max_length", truncation=True,
                                   max_length=max_length, return_tensors="pt"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "projection":
            return out.text_embeds
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

    sizes = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                 projection_dim=projection_dim, max_position_embeddings=max_positions)
    reject_config_args(pretrained, "clip-text", **sizes)
    if pretrained:
        model = hf_load(CLIPTextModelWithProjection.from_pretrained, pretrained, "CLIP text weights")
        tok = load_tokenizer(tokenizer or pretrained)
    else:
        tok = _eos_terminated(load_tokenizer(tokenizer or BYTE_TOKENIZER))
        sizes = {k: v for k, v in sizes.items() if v is not None}
        if "hidden_size" in sizes:
            sizes.setdefault("intermediate_size", 4 * sizes["hidden_size"])
        config = CLIPTextConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id, **sizes)
        model = CLIPTextModelWithProjection(config)
    return HFTextEncoder(model, tok, "projection", int(model.config.projection_dim))


def roberta(
    pretrained: str | None = "roberta-base",
    tokenizer: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
) -> HFTextEncoder:
    """RoBERTa; embedding = the first token's last hidden state (CLAP's choice)."""
    from transformers import RobertaConfig, RobertaModel

    sizes = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads)
    reject_config_args(pretrained, "roberta", **sizes)
    if pretrained:
        model = hf_load(RobertaModel.from_pretrained, pretrained, "RoBERTa weights", add_pooling_layer=False)
        tok = load_tokenizer(tokenizer or pretrained)
    else:
        tok = load_tokenizer(tokenizer or BYTE_TOKENIZER)
        sizes = {k: v for k, v in sizes.items() if v is not None}
        if "hidden_size" in sizes:
            sizes.setdefault("intermediate_size", 4 * sizes["hidden_size"])
        config = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                               max_position_embeddings=514, **sizes)
        model = RobertaModel(config, add_pooling_layer=False)
    return HFTextEncoder(model, tok, "first", int(model.config.hidden_size))
