"""CLIP text towers from open_clip as a pengi-kit text encoder (``openclip-text``).

Any open_clip model works: a built-in name (``ViT-B-32``, ``ViT-H-14``, ``ViT-B-16-SigLIP``,
...), a name from an extra config file (``config_path``), or ``hf-hub:org/repo`` /
``local-dir:/path``. ``pretrained`` is an open_clip tag (``laion2b_s34b_b79k``) or a
local checkpoint file of the whole model; the vision tower and the logit scale are
dropped once the weights are in. The embedding is ``encode_text``: the pooled
(end-of-text) token through the text projection, not normalised.

Importing this module adds ``pengi-tiny-clip`` (this package's ``model_configs/``), a
one-layer model for offline tests, to open_clip's model configs.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torch import nn

from pengi_kit.errors import WeightsError

CONFIGS = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIGS)


class OpenClipText(nn.Module):
    """An open_clip model without its vision tower: texts -> (B, embed_dim).

    ``tokenize`` pads or truncates to ``max_length``, never past the model's context
    length (truncation keeps the end-of-text token); ``forward`` pads the ids back to
    the context length the positional embeddings were trained for.
    """

    def __init__(self, model: nn.Module, tokenizer: object) -> None:
        super().__init__()
        for unused in ("visual", "logit_scale", "logit_bias", "text_decoder"):
            if getattr(model, unused, None) is not None:
                setattr(model, unused, None)
        self.model, self.tokenizer = model, tokenizer
        self.context_length = int(model.context_length)
        self.pad_id = int(getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None) or 0)
        with torch.no_grad():
            probe = torch.full((1, self.context_length), self.pad_id, dtype=torch.long)
            self.embed_dim = int(model.encode_text(probe).shape[-1])

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        length = min(max_length, self.context_length)
        ids = self.tokenizer(list(texts), context_length=length)
        ids = nn.functional.pad(ids, (0, max_length - length), value=self.pad_id)
        # Real tokens run up to the last non-padding one (CLIP's padding id 0 is also "!").
        positions = torch.arange(max_length)
        last = torch.where(ids != self.pad_id, positions, -1).amax(-1, keepdim=True)
        return {"input_ids": ids, "attention_mask": (positions <= last).long()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids = input_ids.masked_fill(attention_mask == 0, self.pad_id)[:, : self.context_length]
        ids = nn.functional.pad(ids, (0, self.context_length - ids.shape[1]), value=self.pad_id)
        return self.model.encode_text(ids)


def openclip_text(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    config_path: str | None = None,
) -> OpenClipText:
    """Build an open_clip model's text tower. ``pretrained``: an open_clip tag, a local
    checkpoint file, or None/"" for random weights. ``config_path``: an open_clip model
    config JSON (or a folder of them) that defines ``model_name``.
    """
    if config_path:
        open_clip.add_model_config(config_path)
    if ":" not in model_name and open_clip.get_model_config(model_name.replace("/", "-")) is None:
        raise ValueError(f"open_clip has no model {model_name!r}; see open_clip.list_models(), or give the "
                         "JSON that defines it as config_path")
    source = pretrained or None
    tag = open_clip.get_pretrained_cfg(model_name, source) if source else {}
    if source and not tag:
        if not Path(source).expanduser().is_file():
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise WeightsError(f"{source}: neither a local checkpoint file nor an open_clip tag of {model_name} "
                               f"(its tags: {', '.join(tags) or 'none'})")
        source = str(Path(source).expanduser())
    try:  # OpenAI weights were trained with QuickGELU, which plain configs do not set
        model = open_clip.create_model(model_name, pretrained=source, force_quick_gelu=bool(tag.get("quick_gelu")))
    except RuntimeError as exc:
        if not source:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"{source}: cannot load open_clip {model_name} weights ({first})") from None
    return OpenClipText(model, open_clip.get_tokenizer(model_name))


__all__ = ["OpenClipText", "openclip_text"]
