"""Audio encoders derive their log-mel front-end (window, hop, fmax) from the sample rate,
so a recipe that sets only the data's rate is right; given values and the published
front-ends are unchanged."""
from __future__ import annotations

import pytest
import torch

from pengi_kit.components.cnn14 import FRONTEND_SETTINGS, cnn14
from pengi_kit.components.frontend import frontend_settings, slaney_mel_filters
from pengi_kit.components.htsat import htsat

# rate -> (window, hop, fmax): ~32 ms windows (a power of two), 10 ms hops, fmax = min(14 kHz, Nyquist)
EXPECTED = {
    8000: (256, 80, 4000.0),
    16000: (512, 160, 8000.0),
    22050: (512, 220, 11025.0),
    32000: (1024, 320, 14000.0),
    44100: (1024, 441, 14000.0),
    48000: (1024, 480, 14000.0),
}
SMALL_HTSAT = dict(mel_bins=16, spec_size=64, patch_embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                   attn_window_size=8, num_classes=4)


def front_end(model: torch.nn.Module) -> tuple[int, int, torch.Tensor]:
    return model.spectrogram_extractor.n_fft, model.spectrogram_extractor.hop_length, model.logmel_extractor.melW


@pytest.mark.parametrize("rate", sorted(EXPECTED))
@pytest.mark.parametrize("build", ["cnn14", "htsat"])
def test_front_end_follows_the_sample_rate(rate: int, build: str) -> None:
    window, hop, fmax = EXPECTED[rate]
    assert frontend_settings(rate) == EXPECTED[rate]
    torch.manual_seed(0)
    model = (cnn14(sample_rate=rate, width=2, num_classes=4, spec_augment=False) if build == "cnn14"
             else htsat("tiny", sample_rate=rate, spec_augment=False, **SMALL_HTSAT)).eval()
    n_fft, hop_length, mel_w = front_end(model)
    assert (n_fft, hop_length) == (window, hop)
    bins = 64 if build == "cnn14" else 16
    assert torch.equal(mel_w, torch.from_numpy(slaney_mel_filters(rate, window, bins, 50.0, fmax)))
    # every mel filter sees some frequency below Nyquist (with fmax 14 kHz at 8 kHz most would be empty)
    assert (mel_w.sum(0) > 0).all()
    with torch.no_grad():  # 100 frames a second at every rate, and the encoder runs
        assert model.spectrogram_extractor(torch.zeros(1, rate)).shape[2] == 101
        assert model(torch.rand(2, rate) - 0.5).shape == (2, model.embed_dim)


def test_given_values_win_and_published_front_ends_stand() -> None:
    model = cnn14(sample_rate=44100, width=2, window_size=2048, hop_size=320, fmax=8000.0)
    n_fft, hop, mel_w = front_end(model)
    assert (n_fft, hop) == (2048, 320)
    assert torch.equal(mel_w, torch.from_numpy(slaney_mel_filters(44100, 2048, 64, 50.0, 8000.0)))
    assert frontend_settings(44100, hop_size=320) == (1024, 320, 14000.0)
    for rate, published in FRONTEND_SETTINGS.items():  # Cnn14 and Cnn14_16k
        assert frontend_settings(rate) == published
    # Pengi feeds 44.1 kHz audio to a 32 kHz front-end: it follows mel_sample_rate, as the reference
    canvas = {**SMALL_HTSAT, "mel_bins": 64, "spec_size": 256, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    pengi = htsat("tiny", sample_rate=44100, mel_sample_rate=32000, **canvas)
    assert front_end(pengi)[:2] == (1024, 320)
    assert torch.equal(front_end(pengi)[2], torch.from_numpy(slaney_mel_filters(32000, 1024, 64, 50.0, 14000.0)))


def test_a_recipe_that_sets_only_the_rate(tmp_path) -> None:
    from pengi_kit.model import build_model
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    raw = tiny_recipe(tmp_path, audio_encoder={"name": "cnn14", "sample_rate": 8000, "width": 2, "clip_seconds": 0.5})
    model = build_model(from_dict(raw))
    n_fft, hop, mel_w = front_end(model.audio_encoder)
    assert (n_fft, hop) == (256, 80)
    assert torch.equal(mel_w, torch.from_numpy(slaney_mel_filters(8000, 256, 64, 50.0, 4000.0)))


def test_absurd_rate_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match="sample_rate 50 Hz is too low"):
        frontend_settings(50)
