"""Checkpoints and folders written before the model layer moved to pengi_kit/models/ (git 939326a:
pengi_kit.pretraining's TaggingModel and ContrastiveModel, convert.clap's ClapModel) load with
today's code and compute the same numbers. tests/fixtures/pre_models/ was written by its
make_fixture.py with that version's code; expected.json holds what that version computed."""
import json
import shutil
from pathlib import Path

import torch

import pengi_kit
from pengi_kit.models import load_model
from pengi_kit.models.clap import ClapModel
from pengi_kit.models.tagging import TaggingModel

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pre_models"


def _close(got: torch.Tensor, want: list) -> bool:
    return torch.allclose(got.float(), torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_pretraining_checkpoints_and_folders_written_before_the_move_give_the_same_numbers(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    folder = tmp_path / "fixture"
    shutil.copytree(FIXTURE, folder)  # loading must not need (or write to) the source tree
    wave = (0.1 * torch.sin(2 * torch.pi * 440 * torch.arange(8000) / 16000))[None]
    with torch.no_grad():
        tagger = load_model(folder / "tagging")
        assert isinstance(tagger, TaggingModel) and _close(tagger.logits(wave), expected["tagging_logits"])
        trained = pengi_kit.load(folder / "contrastive")  # a contrastive run's checkpoint: a Clap
        assert isinstance(trained.model, ClapModel) and trained.model.heads == "projection"
        assert _close(trained.model.embed_audio(wave), expected["checkpoint_audio"])
        assert _close(trained.model.embed_text(expected["texts"]), expected["checkpoint_text"])
        clap = pengi_kit.load(folder / "clap").model  # the exported CLAP folder: the same class
        assert isinstance(clap, ClapModel)
        audio = clap.embed_audio(wave)
        assert _close(audio, expected["folder_audio"])
        assert _close(clap.logits(audio, clap.embed_text(expected["texts"])), expected["folder_logits"])
    # the exported encoder folder still plugs into a recipe as its usage.toml says
    from pengi_kit.components.cnn14 import cnn14

    cnn14(sample_rate=16000, width=1, clip_seconds=0.5, spec_augment=False, pretrained=str(folder / "encoder"))
