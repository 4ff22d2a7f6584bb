"""HTSAT's published sizes are data (HTSAT_PRESETS): the factory builds them and the importer
recognises them from a state dict's shapes."""
import pytest
import torch

from pengi_kit.components.htsat import HTSAT_PRESETS, htsat
from pengi_kit.convert._common import htsat_args

SMALL_FRONT = {"spec_augment": False}


@pytest.mark.parametrize("variant", HTSAT_PRESETS)
def test_each_preset_is_built_and_recognised_from_its_weights(variant):
    with torch.device("meta"):  # shapes only: nothing allocated
        model = htsat(variant, **SMALL_FRONT)
    preset = HTSAT_PRESETS[variant]
    assert model.embed_dim == preset["patch_embed_dim"] * 2 ** (len(preset["depths"]) - 1)
    assert len(model.layers) == len(preset["depths"])
    assert [len(layer.blocks) for layer in model.layers] == list(preset["depths"])
    args = htsat_args(model.state_dict(), "test")
    assert args["variant"] == variant and "depths" not in args


def test_sizes_given_beside_a_preset_win():
    model = htsat("base", spec_size=64, mel_bins=16, patch_embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                  attn_window_size=4, **SMALL_FRONT)
    assert model.embed_dim == 16
    args = htsat_args(model.state_dict(), "test")
    assert (args["patch_embed_dim"], args["depths"], args["num_heads"]) == (8, [1, 1], [1, 2])
