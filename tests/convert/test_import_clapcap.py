"""Microsoft CLAPCap importer: a Pengi without the prompt branch (text mapper switched
off) that loads with one call, matches the direct modules and generates."""
from __future__ import annotations

import pytest
import torch
from layouts import TINY_HTSAT, module_prefixed, old_transformers_gpt2_buffers, randomize, tiny_gpt2_dir, \
    torchlibrosa_front_end

import pengi_kit
from pengi_kit.convert import import_checkpoint
from pengi_kit.checkpoint import read_recipe
from pengi_kit.model import build_model
from pengi_kit.recipe import from_dict


def test_clapcap(tmp_path):
    lm_dir = tiny_gpt2_dir(tmp_path / "gpt2")
    raw = {"model": {
        "projection_dim": 24,
        "audio_encoder": {"name": "htsat", **TINY_HTSAT, "sample_rate": 44100, "clip_seconds": 7.0,
                          "mel_sample_rate": 32000, "fmax": 8000.0},
        "audio_mapper": {"name": "transformer", "prefix_length": 6, "num_layers": 3, "num_heads": 8},
        "text_mapper": {"name": "none"},
        "lm": {"name": "gpt2", "pretrained": str(lm_dir)}}}
    torch.manual_seed(0)
    reference = build_model(from_dict(raw)).eval()
    assert reference.text_mapper is None
    randomize(reference, 1)
    front = torchlibrosa_front_end(32000, 1024, 320, 16, 50, 8000, prefix="audio_encoder.")
    with torch.no_grad():
        reference.audio_encoder.logmel_extractor.melW.copy_(front["audio_encoder.logmel_extractor.melW"])
    renames = [("audio_encoder.", "clap.base.htsat."), ("audio_projection.", "clap.projection."),
               ("audio_mapper.", "clap_project."), ("lm.model.", "gpt.")]
    sd = {}
    for key, value in {**reference.state_dict(), **front}.items():
        old, new = next((o, n) for o, n in renames if key.startswith(o))
        sd[new + key[len(old):]] = value
    sd.update(old_transformers_gpt2_buffers("gpt.", 1, 160))
    torch.save({"model": module_prefixed(sd)}, tmp_path / "clapcap_weights_2023.pth")

    out = tmp_path / "clapcap"
    report = import_checkpoint("ms-clapcap", tmp_path / "clapcap_weights_2023.pth", out, lm=str(lm_dir))
    assert report["mel_matrix"] == "matches slaney"
    recipe = read_recipe(out)
    assert recipe["model"]["text_mapper"] == {"name": "none", "trainable": False}
    assert recipe["model"]["audio_mapper"]["num_layers"] == 3 and recipe["model"]["audio_encoder"]["fmax"] == 8000

    pengi = pengi_kit.load(out)
    assert pengi.model.text_mapper is None and pengi.model.prefix_length == 6
    x = torch.rand(2, 44100, generator=torch.Generator().manual_seed(2)) * 2 - 1
    tokens = reference.tokenize_prompts(["ignored", "also ignored"])
    other = reference.tokenize_prompts(["a different prompt entirely", "x"])
    with torch.no_grad():
        prefix = pengi.model.prefix(x, tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(prefix, reference.prefix(x, tokens["input_ids"], tokens["attention_mask"]))
        # the prompt reaches nothing
        torch.testing.assert_close(pengi.model.prefix(x, other["input_ids"], other["attention_mask"]), prefix)
    texts = pengi.generate([(x[0].numpy(), 44100), (x[1].numpy(), 44100)], "any prompt", method="greedy",
                           max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_clapcap_rejects_pengi_file(tmp_path):
    from pengi_kit.convert import ConversionError

    torch.save({"model": {"caption_decoder.gpt.transformer.wte.weight": torch.zeros(3, 2)}}, tmp_path / "p.pth")
    with pytest.raises(ConversionError, match="not a CLAPCap checkpoint"):
        import_checkpoint("ms-clapcap", tmp_path / "p.pth", tmp_path / "o")
