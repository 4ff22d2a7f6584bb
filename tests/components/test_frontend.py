"""The log-mel front-end against torchlibrosa and librosa (dev-only references)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pengi_kit.components.frontend import (
    LogMelFrontEnd,
    PowerSpectrogram,
    SpecAugment,
    load_reference_weights,
    slaney_mel_filters,
    torchlibrosa_ignored_keys,
)
from pengi_kit.errors import WeightsError

tl_stft = pytest.importorskip("torchlibrosa.stft")

# (sample rate, window, hop, fmax): Pengi/PANNs, LAION-CLAP, PANNs Cnn14_16k.
SETTINGS = {
    "pengi_32k": (32000, 1024, 320, 14000),
    "laion_48k": (48000, 1024, 480, 14000),
    "panns_16k": (16000, 512, 160, 8000),
}


class TorchlibrosaFrontEnd(nn.Module):
    """The reference front-end, with the reference's attribute (and key) names."""

    def __init__(self, sr: int, n_fft: int, hop: int, fmax: float) -> None:
        super().__init__()
        self.spectrogram_extractor = tl_stft.Spectrogram(
            n_fft=n_fft, hop_length=hop, win_length=n_fft, window="hann", center=True, pad_mode="reflect",
            freeze_parameters=True)
        self.logmel_extractor = tl_stft.LogmelFilterBank(
            sr=sr, n_fft=n_fft, n_mels=64, fmin=50, fmax=fmax, ref=1.0, amin=1e-10, top_db=None,
            freeze_parameters=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logmel_extractor(self.spectrogram_extractor(x))


def make_signals(sr: int, seed: int = 0, seconds: float = 1.5) -> torch.Tensor:
    """Broadband audio with the spectral spread of everyday sound (at most ~65 dB
    between the loudest and quietest mel bin): white noise, pink noise with two
    tones, an amplitude-modulated chirp in noise."""
    g = torch.Generator().manual_seed(seed)
    n = int(sr * seconds)
    t = torch.arange(n) / sr
    white = torch.rand(n, generator=g) * 2 - 1
    spec = torch.fft.rfft(torch.randn(n, generator=g))
    spec[0] = 0
    spec[1:] /= torch.arange(1, spec.numel()).sqrt()  # 1/f power
    pink = torch.fft.irfft(spec, n)
    tones = 0.25 * pink / pink.std() + 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 3000 * t)
    envelope = 0.65 + 0.35 * torch.sin(2 * math.pi * 3 * t)
    chirp = torch.sin(2 * math.pi * (100 + 4000 * t / seconds) * t) + 0.3 * torch.randn(n, generator=g)
    return torch.stack([white, tones.clamp(-1, 1), 0.3 * envelope * chirp])


def float64_logmel(x: torch.Tensor, fe: LogMelFrontEnd, n_fft: int, hop: int) -> torch.Tensor:
    spec = torch.stft(x.double(), n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                      center=True, pad_mode="reflect", return_complex=True).abs() ** 2
    mel = spec.transpose(1, 2) @ fe.logmel_extractor.melW.double()
    return 10 * torch.log10(mel.clamp(min=1e-10)).unsqueeze(1)


@pytest.mark.parametrize("setting", SETTINGS)
def test_mel_matrix_matches_librosa(setting: str) -> None:
    librosa = pytest.importorskip("librosa")
    sr, n_fft, _, fmax = SETTINGS[setting]
    ours = slaney_mel_filters(sr, n_fft, 64, 50, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=64, fmin=50, fmax=fmax).T
    assert ours.shape == ref.shape == (n_fft // 2 + 1, 64)
    assert abs(ours - ref).max() < 1e-7


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_logmel_parity_with_torchlibrosa(setting: str, seed: int) -> None:
    sr, n_fft, hop, fmax = SETTINGS[setting]
    x = make_signals(sr, seed)
    with torch.no_grad():
        ref = TorchlibrosaFrontEnd(sr, n_fft, hop, fmax)(x)
        fe = LogMelFrontEnd(sr, n_fft, hop, 64, 50, fmax)
        ours, exact = fe(x), float64_logmel(x, fe, n_fft, hop)
    assert ours.shape == ref.shape == (3, 1, x.shape[1] // hop + 1, 64)
    assert (ours - ref).abs().max().item() < 1e-4
    assert (ours - exact).abs().max().item() < 1e-4


def test_high_dynamic_range_stays_at_float32_precision() -> None:
    """Brown noise puts ~60 dB between mel bins of one frame. There both float32
    implementations drift from a float64 STFT by ~1e-4 dB (an FFT and a direct DFT
    round differently), so parity is bounded by that floor, not by 1e-4."""
    sr, n_fft, hop, fmax = SETTINGS["pengi_32k"]
    brown = torch.cumsum(torch.randn(2, sr, generator=torch.Generator().manual_seed(0)), 1)
    x = 0.3 * (brown - brown.mean(1, keepdim=True)) / brown.std(1, keepdim=True)
    fe = LogMelFrontEnd(sr, n_fft, hop, 64, 50, fmax)
    with torch.no_grad():
        ref, ours, exact = TorchlibrosaFrontEnd(sr, n_fft, hop, fmax)(x), fe(x), float64_logmel(x, fe, n_fft, hop)
    assert (ours - exact).abs().max() < 5e-4
    assert (ours - ref).abs().max() < 5e-4


def test_frames_dtype_and_silence() -> None:
    fe = LogMelFrontEnd(16000, 512, 160, 64, 50, 8000)
    out = fe(torch.zeros(2, 16000, dtype=torch.float64))
    assert out.shape == (2, 1, 101, 64) and out.dtype == torch.float64
    assert torch.all(out == -100.0)  # 10*log10(amin)


def test_state_dict_holds_only_melW() -> None:
    fe = LogMelFrontEnd()
    assert list(fe.state_dict()) == ["logmel_extractor.melW"]
    assert fe.state_dict()["logmel_extractor.melW"].shape == (513, 64)


def test_ignored_keys_are_exactly_the_stft_kernels() -> None:
    ref_keys = set(TorchlibrosaFrontEnd(32000, 1024, 320, 14000).state_dict())
    ours = set(LogMelFrontEnd().state_dict())
    assert ref_keys - ours == set(torchlibrosa_ignored_keys())
    assert torchlibrosa_ignored_keys("audio_branch.") == (
        "audio_branch.spectrogram_extractor.stft.conv_real.weight",
        "audio_branch.spectrogram_extractor.stft.conv_imag.weight",
    )


def test_checkpoint_melW_wins(tmp_path) -> None:
    # Pengi's case: audio at 44.1 kHz, stored mel filters built for 32 kHz.
    ref = TorchlibrosaFrontEnd(32000, 1024, 320, 14000)
    path = tmp_path / "ref.pth"
    torch.save({"model": ref.state_dict()}, path)
    ours = LogMelFrontEnd(44100, 1024, 320, 64, 50, 14000)
    x = make_signals(44100, seconds=1.0)
    with torch.no_grad():
        expected = ref(x)
        before = ours(x)
        load_reference_weights(ours, path, n_fft=1024)
        after = ours(x)
    assert (before - expected).abs().max() > 1.0  # the 44.1 kHz filters really differ
    assert torch.equal(ours.logmel_extractor.melW, ref.logmel_extractor.melW)
    assert (after - expected).abs().max() < 1e-4


def test_stft_kernel_of_another_window_is_refused(tmp_path) -> None:
    path = tmp_path / "ref512.pth"
    torch.save({"model": TorchlibrosaFrontEnd(16000, 512, 160, 8000).state_dict()}, path)
    with pytest.raises(WeightsError, match="window is 1024"):
        load_reference_weights(LogMelFrontEnd(), path, n_fft=1024)


def test_unreadable_and_missing_files(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pth"):
        load_reference_weights(LogMelFrontEnd(), bad, n_fft=1024)
    with pytest.raises(WeightsError, match="not found"):
        load_reference_weights(LogMelFrontEnd(), tmp_path / "absent.pth", n_fft=1024)


def test_power_spectrogram_is_differentiable() -> None:
    x = torch.randn(1, 4000, requires_grad=True)
    PowerSpectrogram(256, 64)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_spec_augment_drops_whole_stripes_in_training_only() -> None:
    torch.manual_seed(0)
    aug = SpecAugment(time_width=20, time_stripes=2, freq_width=6, freq_stripes=2)
    x = torch.rand(8, 1, 100, 32) + 1.0  # strictly positive, so zeros are drops
    assert torch.equal(aug.eval()(x), x)
    y = aug.train()(x)
    zero = y == 0
    assert zero.any()
    time_rows = zero.all(dim=3, keepdim=True)
    freq_cols = zero.all(dim=2, keepdim=True)
    assert torch.equal(zero, time_rows | freq_cols)  # every zero lies in a dropped stripe
    assert time_rows.sum(dim=2).max() <= 2 * 19 and freq_cols.sum(dim=3).max() <= 2 * 5
