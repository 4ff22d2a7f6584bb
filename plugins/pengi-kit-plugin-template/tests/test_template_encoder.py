"""The template's encoder: weights loading, its example recipe, and a few training steps."""
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pengi_kit
from pengi_kit.engine.trainer import Trainer
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


def test_trains_from_the_example_recipe(tmp_path):
    tiny = ["data.synthetic_train_size=48", "data.synthetic_valid_size=8", "train.batch_size=8",
            "train.max_steps=6", "train.log_every=1", "optim.warmup_steps=1", "optim.lr=0.003",
            "model.audio_encoder.clip_seconds=0.5", "model.audio_encoder.channels=4",
            "model.lm.n_layer=1", "model.lm.n_embd=32", "model.audio_mapper.num_layers=1",
            "model.text_mapper.num_layers=1", f"train.output_dir={tmp_path / 'run'}"]
    Trainer(load_recipe(RECIPE, tiny), progress=False).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    pengi = pengi_kit.load(tmp_path / "run")
    texts = pengi.generate([(torch.randn(16000).numpy() * 0.1, 16000)], "this is a sound of")
    assert len(texts) == 1 and isinstance(texts[0], str)
