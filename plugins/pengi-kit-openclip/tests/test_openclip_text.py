"""pengi-kit-openclip: contract, tokenizer round trip, local weights, the entry point, a recipe that trains."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

import open_clip
import pytest
import torch

from pengi_kit.errors import WeightsError
from pengi_kit.recipe import load_recipe
from pengi_kit.testing import check_component, check_installed, check_trains
from pengi_kit_openclip.text import openclip_text

RECIPE = Path(__file__).parents[1] / "recipes" / "pengi_openclip.toml"
TINY = "pengi-tiny-clip"  # a 1-layer model config shipped with the plugin (context length 32)
TEXTS = ["a dog barks", "rain on a tin roof!"]


def test_contract():
    check_component("text_encoder", "openclip-text")


def test_component_comes_from_the_installed_distribution():
    check_installed("openclip", "pengi-kit-openclip", [("text_encoder", "openclip-text")])


def test_any_max_length_gives_open_clips_own_embedding():
    encoder = openclip_text(TINY, pretrained="").eval()
    reference = open_clip.get_tokenizer(TINY)(TEXTS)  # padded to the context length, 32
    want = encoder.model.encode_text(reference)
    lengths = [row.tolist().index(encoder.tokenizer.eot_token_id) + 1 for row in reference]
    for max_length in (10, 32, 48):  # shorter than, equal to and longer than the context
        tokens = encoder.tokenize(TEXTS, max_length)
        assert tokens["input_ids"].shape == (2, max_length)
        assert tokens["attention_mask"].sum(1).tolist() == lengths  # start, words ("!" included), end
        torch.testing.assert_close(encoder(**tokens), want)
    cut = encoder.tokenize(["one two three four five six"], 4)["input_ids"][0]
    assert cut[0] == encoder.tokenizer.sot_token_id and cut[-1] == encoder.tokenizer.eot_token_id


def test_loads_a_local_checkpoint_and_drops_the_vision_tower(tmp_path):
    source = open_clip.create_model(TINY)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "tiny.pt")
    encoder = openclip_text(TINY, pretrained=str(tmp_path / "tiny.pt")).eval()
    torch.testing.assert_close(encoder.model.token_embedding.weight, source.token_embedding.weight)
    tokens = open_clip.get_tokenizer(TINY)(TEXTS)
    torch.testing.assert_close(encoder(**encoder.tokenize(TEXTS, 16)), source.eval().encode_text(tokens))
    assert encoder.model.visual is None and encoder.embed_dim == 12
    assert not any(k.startswith(("model.visual.", "model.logit_")) for k in encoder.state_dict())


def test_weights_that_do_not_fit_are_one_clear_error(tmp_path):
    torch.save({"token_embedding.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="other.pt: cannot load open_clip pengi-tiny-clip weights"):
        openclip_text(TINY, pretrained=str(tmp_path / "other.pt"))
    with pytest.raises(WeightsError, match="neither a local checkpoint file nor an open_clip tag.*laion2b_s34b_b79k"):
        openclip_text("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="open_clip has no model 'no-such-model'"):
        openclip_text("no-such-model", pretrained="")


def test_example_recipe_validates():
    encoder = load_recipe(str(RECIPE))["model"]["text_encoder"]
    assert encoder["name"] == "openclip-text" and encoder["pretrained"] == "laion2b_s34b_b79k"


def test_trains_in_a_recipe_and_the_checkpoint_loads(tmp_path):
    encoder = {"name": "openclip-text", "model_name": TINY, "pretrained": "", "trainable": True}
    pengi = check_trains(tmp_path / "run", text_encoder=encoder)  # trains, checks the loss, loads, generates
    assert pengi.model.text_encoder.model.visual is None
    texts = pengi.generate((torch.randn(8000).numpy() * 0.1, 16000), ["this is a sound of", "generate audio caption"])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
