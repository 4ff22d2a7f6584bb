"""The architecture an imported Pengi checkpoint builds has the published size: Pengi base
with GPT-2 base and CLIP ViT-B/16's text tower, built from architecture-only folders
(config + tokenizer, no weights, as the importer writes them) on the meta device."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, GPT2Config

from pengi_kit.components._hf import byte_tokenizer
from pengi_kit.checkpoint import referenced_slots
from pengi_kit.model import build_model
from pengi_kit.recipe import load_recipe
from pengi_kit.sources import mark_architecture_only

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# openai/clip-vit-base-patch16's text_config; GPT2Config() is GPT-2 base (124M)
CLIP_B16_TEXT = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, projection_dim=512)


def arch_folder(folder: Path, config) -> Path:
    folder.mkdir()
    config.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)  # offline; only the LM's vocabulary size matters here
    mark_architecture_only(folder, "test")
    return folder


@pytest.mark.slow
def test_pengi_base_parameter_count(tmp_path):
    lm = arch_folder(tmp_path / "lm", GPT2Config())
    text = arch_folder(tmp_path / "text_encoder", CLIPTextConfig(**CLIP_B16_TEXT))
    recipe = load_recipe(RECIPES / "pengi_base.toml", [f"model.lm.pretrained={lm}",
                                                       f"model.text_encoder.pretrained={text}",
                                                       "train.save_frozen=false"])
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = build_model(recipe)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731 -- tied weights once
    parts = {slot: count(getattr(model, slot)) for slot in
             ("audio_encoder", "audio_projection", "text_encoder", "text_projection", "audio_mapper", "text_mapper",
              "lm")}
    assert parts["lm"] == 124_439_808  # GPT-2 base, lm_head tied to wte
    assert parts["text_encoder"] == 63_428_096  # CLIP ViT-B/16 text tower with its 512x512 projection
    assert parts["audio_encoder"] == 30_241_687  # HTSAT-tiny with token-semantic and (unused) linear head
    assert parts["audio_mapper"] == parts["text_mapper"] == 50_417_664  # linear to 40x768 + 4 layers + constants
    total = count(model)
    assert total == sum(parts.values()) == 322_356_887
    assert abs(total - 3.2e8) / 3.2e8 < 0.02  # the published ~3.2e8 (Pengi, NeurIPS 2023)
    # an architecture-only source is never "referenced" (left out of a checkpoint): it holds no weights
    assert referenced_slots(recipe) == []
    hub = load_recipe(RECIPES / "pengi_base.toml", ["train.save_frozen=false"])
    assert referenced_slots(hub) == ["text_encoder", "lm"]
