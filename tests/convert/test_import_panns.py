"""PANNs importer: Cnn14 (32 kHz) and Cnn14_16k checkpoints in the published layout become
an encoder folder that ``cnn14(pretrained=...)`` loads, computing what the source computes."""
from __future__ import annotations

import tomllib

import pytest
import torch
from layouts import randomize, tiny_cnn14, with_torchlibrosa

from pengi_kit.components.cnn14 import FRONTEND_SETTINGS, cnn14
from pengi_kit.convert import ConversionError, import_checkpoint
from pengi_kit.errors import WeightsError
from pengi_kit.model import build_model
from pengi_kit.recipe import from_dict


def panns_file(tmp_path, rate):
    model = tiny_cnn14(sample_rate=rate)
    randomize(model, seed=rate)
    window, hop, fmax = FRONTEND_SETTINGS[rate]
    sd = with_torchlibrosa(model, rate, window, hop, 64, 50, fmax)
    path = tmp_path / f"Cnn14_{rate}.pth"
    torch.save({"iteration": 140000, "model": sd}, path)  # PANNs also saves the iteration
    return model, path


@pytest.mark.parametrize("rate", [32000, 16000])
def test_panns_import_detects_rate_and_matches(tmp_path, rate):
    model, path = panns_file(tmp_path, rate)
    out = tmp_path / "cnn14"
    report = import_checkpoint("panns", path, out)
    assert report["args"] == {"sample_rate": rate, "width": 4, "num_classes": 10}
    assert report["mel_matrix"] == "matches slaney"
    assert sorted(k for keys in report["ignored"].values() for k in keys) == [
        "spectrogram_extractor.stft.conv_imag.weight", "spectrogram_extractor.stft.conv_real.weight"]
    table = tomllib.loads((out / "usage.toml").read_text())["model"]["audio_encoder"]
    assert table["pretrained"] == str(out.resolve())

    loaded = cnn14(**{k: v for k, v in table.items() if k != "name"}, spec_augment=False).eval()
    wave = torch.rand(2, rate, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want, got = model.forward_dict(wave), loaded.forward_dict(wave)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)

    raw = {"model": {"projection_dim": 8, "audio_encoder": {"name": "cnn14", "sample_rate": rate, "width": 4,
                                                            "num_classes": 10, "pretrained": str(out)},
                     "audio_mapper": {"name": "mlp", "prefix_length": 2}, "text_mapper": {"name": "none"},
                     "lm": {"name": "gpt2", "pretrained": "", "n_layer": 1, "n_embd": 16, "n_head": 2}}}
    pengi = build_model(from_dict(raw))  # a recipe uses the folder as the encoder's pretrained source
    torch.testing.assert_close(pengi.audio_encoder.fc1.weight, model.fc1.weight)


def test_folder_checks_build_arguments(tmp_path):
    _, path = panns_file(tmp_path, 16000)
    import_checkpoint("panns", path, tmp_path / "cnn14_16k")
    with pytest.raises(WeightsError, match="imported for sample_rate = 16000.*built with sample_rate = 32000"):
        cnn14(width=4, num_classes=10, pretrained=str(tmp_path / "cnn14_16k"))
    with pytest.raises(WeightsError, match="holds a 'cnn14' encoder, not 'htsat'"):
        from pengi_kit.components.htsat import htsat
        htsat(pretrained=str(tmp_path / "cnn14_16k"))


def test_not_panns(tmp_path):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "x.pth")
    with pytest.raises(ConversionError, match="not a PANNs Cnn14 checkpoint"):
        import_checkpoint("panns", tmp_path / "x.pth", tmp_path / "out")
