"""The template's encoder: weights loading and its example recipe."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pengi_kit.errors import WeightsError
from pengi_kit.recipe import load_recipe
from pengi_kit_plugin_template.encoder import ConvEncoder

RECIPE = Path(__file__).parents[1] / "recipes" / "template_demo.toml"
SMALL = {"clip_seconds": 0.5, "n_mels": 32, "channels": 4, "num_blocks": 2, "embed_dim": 8}


def test_loads_its_own_weights(tmp_path):
    source = ConvEncoder(**SMALL)
    save_file(source.state_dict(), str(tmp_path / "encoder.safetensors"))
    loaded = ConvEncoder(**SMALL, pretrained=str(tmp_path / "encoder.safetensors")).eval()
    wave = torch.rand(2, 8000) * 2 - 1
    torch.testing.assert_close(loaded(wave), source.eval()(wave))
    with pytest.raises(WeightsError, match="shape mismatch"):  # weights of another size
        ConvEncoder(**{**SMALL, "channels": 8}, pretrained=str(tmp_path / "encoder.safetensors"))


def test_example_recipe_validates():
    assert load_recipe(RECIPE)["model"]["audio_encoder"]["name"] == "template-cnn"
