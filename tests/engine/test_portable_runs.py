"""What a run leaves travels and is the best of it: checkpoints load from any working directory
after the run folder moves (local sources copied into it), pretraining exports the best
validation's encoder, and weight decay spares biases, norms, embeddings and learned constants."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pengi_kit
from pengi_kit.components.cnn14 import cnn14
from pengi_kit.engine.optim import decay_groups
from pengi_kit.engine.trainer import Trainer
from pengi_kit.models import build_model
from pengi_kit.models.base import write_encoder_folder
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

ENCODER = {"sample_rate": 16000, "width": 2, "clip_seconds": 0.5, "spec_augment": False}


def test_a_run_moved_elsewhere_loads_and_generates_from_a_third_directory(tmp_path, monkeypatch):
    torch.manual_seed(0)
    encoder = tmp_path / "weights" / "encoder"
    write_encoder_folder(encoder, "cnn14", ENCODER, cnn14(**ENCODER).state_dict(), {"format": "test"})
    monkeypatch.chdir(tmp_path)
    raw = tiny_recipe("runs/portable", train={"max_steps": 2},  # a relative output_dir, as users write it
                      audio_encoder={"name": "cnn14", **ENCODER, "pretrained": "weights/encoder", "trainable": False})
    path = Trainer(from_dict(raw), progress=False).fit()
    recipe = (path / "recipe.toml").read_text()
    assert 'pretrained = "sources/audio_encoder-pretrained/encoder"' in recipe  # named relative to the run
    wave = (0.1 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.float32)
    options = {"method": "greedy", "max_new_tokens": 4}
    before = pengi_kit.load(path).generate([(wave, 16000)], "this is a sound of", **options)
    # move the run and the encoder it was trained on; load from a third directory
    shutil.move(tmp_path / "runs" / "portable", tmp_path / "moved")
    shutil.move(tmp_path / "weights", tmp_path / "gone")
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    pengi = pengi_kit.load(tmp_path / "moved")
    assert pengi.generate([(wave, 16000)], "this is a sound of", **options) == before
    torch.testing.assert_close(pengi.model.audio_encoder.state_dict()["conv_block1.conv1.weight"],
                               load_file(str(tmp_path / "gone" / "encoder" / "model.safetensors"))["conv_block1.conv1.weight"])


def _tagging(out, **train):
    return {"name": "tagger", "task": "tagging", "model": {"audio_encoder": {"name": "cnn14", **ENCODER}},
            "data": {"synthetic_train_size": 64, "synthetic_valid_size": 16},
            "optim": {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"},
            "train": {"batch_size": 8, "max_steps": 12, "eval_every": 2, "save_every": 12, "log_every": 2,
                      "output_dir": str(out), "best_metric": "valid_accuracy", "best_mode": "max", **train}}


@pytest.mark.parametrize("export", ["best", "last"])
def test_pretraining_exports_the_best_validation_or_the_last_step(tmp_path, export):
    run = tmp_path / "run"
    Trainer(from_dict(_tagging(run, export=export)), progress=False).fit()
    source = json.loads((run / "encoder" / "component.json").read_text())["source"]
    exported = load_file(str(run / "encoder" / "model.safetensors"))
    best = json.loads((run / "best" / "meta.json").read_text())
    chosen = run / ("best" if export == "best" else "checkpoints/step-00000012")
    weights = load_file(str(chosen / "model.safetensors"))
    assert source["step"] == (best["step"] if export == "best" else 12)
    if export == "best":
        assert source["best_metric"] == "valid_accuracy" and source["best_value"] == best["best_value"]
    assert all(torch.equal(v, weights[f"audio_encoder.{k}"]) for k, v in exported.items())


def test_weight_decay_spares_biases_norms_embeddings_and_learned_constants(tmp_path):
    raw = tiny_recipe(tmp_path)
    model = build_model(from_dict(raw))  # a trained GPT-2 (embeddings, positions), CNN14 (batch norms), mappers
    decay, spare = decay_groups(model)
    shapes = dict(model.named_parameters())
    assert decay and spare and set(decay).isdisjoint(spare)
    assert all(shapes[n].ndim >= 2 for n in decay)
    assert {"lm.model.transformer.wte.weight", "lm.model.transformer.wpe.weight"} <= set(spare)
    assert any("prefix_const" in n for n in spare) and any(n.endswith("bn0.weight") for n in spare)
    assert any(n.startswith("audio_encoder.conv_block1.conv1") for n in decay)
    all_of_them, none = decay_groups(model, decay_all=True)
    assert sorted(all_of_them) == sorted(decay + spare) and not none
    optimizer = pengi_kit.Trainer(from_dict(raw, ["optim.weight_decay=0.1"]), progress=False).optimizer
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
