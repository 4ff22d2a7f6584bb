"""The recipes of issue 14 (a SmolLM2-135M Pengi, a Qwen2.5-0.5B Pengi with LoRA) validate offline,
and training them offline ends in one line that names the missing weights and how to get them."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from pengi_kit.cli import main

REPO = Path(__file__).resolve().parents[2]
DATA = ["-s", "data.train=synthetic", "-s", "data.valid=synthetic"]  # the recipes' own data/ manifests are the user's


@pytest.mark.parametrize("recipe, weights", [
    ("recipes/ablations/smollm2_135m.toml", "HuggingFaceTB/SmolLM2-135M"),
    ("recipes/qwen_lora.toml", "Qwen/Qwen2.5-0.5B-Instruct"),
    ("recipes/whisper_smollm2.toml", "openai/whisper-base"),  # the encoder is built first
    ("recipes/whisper_qwen_lora.toml", "openai/whisper-small"),
])
def test_lm_recipe_validates_and_offline_training_names_the_missing_weights(recipe, weights, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty, whatever this machine has cached
    checked = CliRunner().invoke(main, ["validate", str(REPO / recipe), *DATA])
    assert checked.exit_code == 0 and "lm=causal-lm" in checked.output, checked.output

    result = CliRunner().invoke(main, ["train", str(REPO / recipe), *DATA, "-s", f"train.output_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in (f"'{weights}'", "Hugging Face hub id", f"`hf download {weights}`", "set `pretrained` to a local"):
        assert needle in lines[0], lines[0]
