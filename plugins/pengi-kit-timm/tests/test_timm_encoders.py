"""pengi-kit-timm: contract, weights adaptation, the entry point, and a recipe that trains."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from pengi_kit.errors import WeightsError
from pengi_kit.recipe import load_recipe
from pengi_kit.testing import check_component, check_installed, check_trains
from pengi_kit_timm.encoders import timm_ast, timm_efficientnet
from pengi_kit_timm.plugin import TINY_FRONTEND

RECIPE = Path(__file__).parents[1] / "recipes" / "pengi_ast.toml"
TINY_VIT = {"depth": 1, "embed_dim": 16, "num_heads": 2}


@pytest.mark.parametrize("name", ["timm-ast", "timm-efficientnet"])
def test_contract(name):
    check_component("audio_encoder", name)


def test_components_come_from_the_installed_distribution():
    check_installed("timm", "pengi-kit-timm", [("audio_encoder", "timm-ast"), ("audio_encoder", "timm-efficientnet")])


def test_ast_geometry_matches_ast():
    model = timm_ast(model_name="vit_tiny_patch16_224", model_args=TINY_VIT)  # defaults: 128 x 1025, stride 10
    assert model.backbone.patch_embed.grid_size == (12, 101)  # AST's 1212 patches
    assert model.backbone.patch_embed.proj.stride == (10, 10)
    assert model(torch.zeros(1, 16000)).shape == (1, 16)  # a short clip is padded to 10.24 s


def test_ast_loads_image_weights_adapted_to_spectrograms(tmp_path):
    # a 3-channel 32x32 "ImageNet" ViT with a classifier: 2x2 patches of 16, no overlap
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5, **TINY_VIT)
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    model = timm_ast(**TINY_FRONTEND, model_name="vit_tiny_patch16_224", model_args=TINY_VIT,
                     pretrained=str(tmp_path / "vit.safetensors")).backbone
    want = source.state_dict()
    assert model.patch_embed.grid_size == (2, 4)  # 32 mel bins x 51 frames at stride 10
    torch.testing.assert_close(model.patch_embed.proj.weight, want["patch_embed.proj.weight"].sum(1, keepdim=True))
    resampled = resample_abs_pos_embed(want["pos_embed"], new_size=(2, 4), old_size=(2, 2), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed, resampled)
    for key in ("cls_token", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight"):
        torch.testing.assert_close(model.state_dict()[key], want[key])


def test_efficientnet_loads_a_torch_checkpoint(tmp_path):
    source = timm.create_model("test_efficientnet", num_classes=7)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "effnet.pth")
    model = timm_efficientnet(**TINY_FRONTEND, model_name="test_efficientnet",
                              pretrained=str(tmp_path / "effnet.pth")).backbone
    want = source.state_dict()
    torch.testing.assert_close(model.conv_stem.weight, want["conv_stem.weight"].sum(1, keepdim=True))
    for key in ("blocks.1.0.conv_exp.weight", "blocks.3.0.se.conv_reduce.weight", "conv_head.weight"):
        torch.testing.assert_close(model.state_dict()[key], want[key])


def test_weights_that_do_not_fit_are_one_clear_error(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, **TINY_VIT)
    save_file({"v." + k: v for k, v in source.state_dict().items()}, str(tmp_path / "other.safetensors"))
    build = dict(TINY_FRONTEND, model_name="vit_tiny_patch16_224", model_args=TINY_VIT)
    with pytest.raises(WeightsError, match="missing .*unexpected v.blocks"):
        timm_ast(**build, pretrained=str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not found"):
        timm_ast(**build, pretrained=str(tmp_path / "absent.safetensors"))
    with pytest.raises(WeightsError, match="no pretrained weights 'vit_tiny_patch16_224.nope'.*augreg"):
        timm_ast(**build, pretrained="nope")
    with pytest.raises(ValueError, match="set model_name = 'vit_small_patch16_224'"):
        timm_ast(**build, pretrained="vit_small_patch16_224.augreg_in21k")


def test_example_recipe_validates():
    recipe = load_recipe(str(RECIPE))
    encoder = recipe["model"]["audio_encoder"]
    assert encoder["name"] == "timm-ast" and encoder["pretrained"] == "augreg_in21k"


def test_ast_trains_in_a_recipe_and_the_checkpoint_loads(tmp_path):
    encoder = {"name": "timm-ast", **TINY_FRONTEND, "model_name": "vit_tiny_patch16_224", "model_args": TINY_VIT}
    pengi = check_trains(tmp_path / "run", audio_encoder=encoder)  # trains, checks the loss, loads, generates
    assert pengi.model.audio_encoder.backbone.patch_embed.grid_size == (2, 4)
    texts = pengi.generate([(torch.randn(8000).numpy() * 0.1, 16000)], "this is a sound of")
    assert len(texts) == 1 and isinstance(texts[0], str)
