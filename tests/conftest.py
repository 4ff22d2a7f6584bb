import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _fresh_plugins():
    from pengi_kit import plugins

    plugins.reset()
    yield
    plugins.reset()


def tiny_raw_recipe(out_dir, text_encoder=True, **train):
    """A recipe dict for a model small enough to train in seconds on the synthetic corpus."""
    raw = {
        "name": "tiny", "seed": 0,
        "model": {
            "projection_dim": 16, "prompt_length": 48, "target_length": 64,
            "audio_encoder": {"name": "cnn14", "sample_rate": 16000, "width": 2, "clip_seconds": 0.5,
                              "spec_augment": False},
            "audio_mapper": {"name": "transformer", "prefix_length": 2, "num_layers": 1, "num_heads": 2},
            "text_mapper": {"name": "transformer", "prefix_length": 2, "num_layers": 1, "num_heads": 2},
            "lm": {"name": "gpt2", "pretrained": "", "n_layer": 1, "n_embd": 32, "n_head": 2,
                   "n_positions": 128, "trainable": True},
        },
        "data": {"synthetic_train_size": 64, "synthetic_valid_size": 8},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": 4, "log_every": 1, "output_dir": str(out_dir), **train},
        "generate": {"method": "greedy", "max_new_tokens": 8},
    }
    if text_encoder:
        raw["model"]["text_encoder"] = {"name": "clip-text", "pretrained": "", "hidden_size": 16, "num_layers": 1,
                                        "num_heads": 2, "projection_dim": 8, "max_positions": 48,
                                        "trainable": True}
    else:
        raw["model"]["text_mapper"]["prefix_length"] = 48
    return raw


@pytest.fixture
def tiny_recipe(tmp_path):
    from pengi_kit.recipe import from_dict

    return from_dict(tiny_raw_recipe(tmp_path / "run"))
