"""A checkpoint saved by pengi-kit before the LM zoo (git 6ce6226, `gpt2` LM) still loads and answers the same.

tests/fixtures/legacy_checkpoint/ was written by its make_fixture.py with that version's code
(PYTHONPATH=<git archive 6ce6226>); expected.json holds the texts that version generated."""
import json
import shutil
from pathlib import Path

import torch

import pengi_kit

FIXTURE = Path(__file__).parents[1] / "fixtures" / "legacy_checkpoint"


def test_legacy_checkpoint_generates_the_same_text(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    folder = tmp_path / "legacy"
    shutil.copytree(FIXTURE, folder)  # loading must not need (or write to) the source tree
    pengi = pengi_kit.load(folder)
    assert pengi.model.recipe["model"]["lm"]["name"] == "gpt2"
    # the state-dict keys of the gpt2 LM are unchanged (load_weights is strict on the rest)
    assert "lm.model.transformer.wte.weight" in pengi.model.state_dict()
    rate = expected["sample_rate"]
    wave = 0.1 * torch.sin(2 * torch.pi * 440 * torch.arange(rate // 2) / rate)
    for method, decoding in expected["decoding"].items():
        text = pengi.generate([(wave, rate)], expected["prompt"], **decoding)[0]
        assert text == expected[method], (method, text)
