"""Log-mel front-end shared by the audio encoders, in plain torch.

It reproduces torchlibrosa's ``Spectrogram(n_fft, hop, win_length=n_fft,
window='hann', center=True, pad_mode='reflect')`` followed by
``LogmelFilterBank(sr, n_fft, n_mels, fmin, fmax, ref=1.0, amin=1e-10,
top_db=None)`` -- the front-end of PANNs, HTSAT, Pengi and LAION-CLAP -- to about
1e-5 dB, with ``torch.stft`` instead of two 1024-tap convolutions.

Which stored buffers of a reference checkpoint are used, and why:

- ``logmel_extractor.melW`` (n_fft // 2 + 1, n_mels) is *used*: :class:`LogMel`
  keeps it as a persistent buffer of that name and shape, so a checkpoint's mel
  matrix loads into it and wins over the one computed here. That matters where a
  reference built its filters for another rate than it is fed (Pengi computes them
  for 32 kHz and feeds 44.1 kHz audio), and it keeps a model bit-faithful to the
  matrix it was trained with.
- ``spectrogram_extractor.stft.conv_real.weight`` / ``conv_imag.weight`` are
  *knowingly ignored*: they are the Hann-windowed DFT basis, fully determined by
  ``n_fft``, which ``torch.stft`` computes faster. Importers drop them with
  :func:`torchlibrosa_ignored_keys` after checking their shape
  (:func:`load_reference_weights` does both).

A ``pretrained`` source is either such a reference checkpoint file or an encoder folder
(:mod:`pengi_kit.folders`: ``component.json`` naming the component and the build arguments
its weights are for, plus ``model.safetensors`` in this module's key names, STFT kernels
already dropped); :func:`pengi_kit.folders.load_reference_weights` reads both.

librosa is not needed at run time: the slaney mel matrix is computed here in numpy,
matching ``librosa.filters.mel(htk=False, norm='slaney')``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# reading weights (reference files, encoder folders) lives in pengi_kit.folders; the names stay importable here
from pengi_kit.folders import (  # noqa: F401
    COMPONENT_FILE, COMPONENT_WEIGHTS, STFT_KEYS, load_reference_weights, load_strict, short,
)


def torchlibrosa_ignored_keys(prefix: str = "") -> tuple[str, ...]:
    """State-dict keys of torchlibrosa's STFT kernels, which this front-end ignores.

    >>> torchlibrosa_ignored_keys("audio_branch.")[0]
    'audio_branch.spectrogram_extractor.stft.conv_real.weight'
    """
    return tuple(prefix + k for k in STFT_KEYS)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    mels = f / f_sp
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """Mel matrix (n_fft // 2 + 1, n_mels), float32, equal to librosa's slaney filters."""
    fmax = sample_rate // 2 if fmax is None else fmax
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # slaney area normalisation
    return weights.astype(np.float32).T.copy()


# The PANNs / HTSAT front-end: 1024-sample (32 ms) windows, 320-sample (10 ms) hops and
# 50-14000 Hz mel filters at 32 kHz; :func:`frontend_settings` scales it to other rates.
WINDOW_MS, HOP_MS = 32, 10
PUBLISHED_FMAX = 14000.0


def frontend_settings(sample_rate: int, window_size: int | None = None, hop_size: int | None = None,
                      fmax: float | None = None) -> tuple[int, int, float]:
    """``(window_size, hop_size, fmax)`` for ``sample_rate``, each given value kept and each
    missing one derived so that one published front-end serves every rate: the window is the
    largest power of two within 32 ms, the hop 10 ms, fmax 14 kHz or the Nyquist frequency if
    lower. This gives the published settings where they exist (Cnn14 32 kHz: 1024, 320, 14000;
    Cnn14_16k: 512, 160, 8000; LAION-CLAP 48 kHz: 1024, 480, 14000) and keeps the frames
    per second, so a model's time resolution does not depend on the data's rate.

    >>> frontend_settings(8000), frontend_settings(44100), frontend_settings(44100, hop_size=320)
    ((256, 80, 4000.0), (1024, 441, 14000.0), (1024, 320, 14000.0))
    """
    if sample_rate < 100:
        raise ValueError(f"sample_rate {sample_rate} Hz is too low for a log-mel front-end (10 ms hop); "
                         "give the audio's rate in Hz, e.g. 16000")
    # integer arithmetic: 0.032 * 32000 must be 1024, not 1023.99...
    window = window_size or 2 ** ((sample_rate * WINDOW_MS // 1000).bit_length() - 1)
    hop = hop_size or sample_rate * HOP_MS // 1000
    top = fmax or min(PUBLISHED_FMAX, sample_rate / 2)
    return window, hop, float(top)


class PowerSpectrogram(nn.Module):
    """Waveform (B, T) -> power spectrogram (B, 1, frames, n_fft // 2 + 1).

    Hann window, centred with reflect padding; frames = T // hop + 1. Stateless:
    the window is a non-persistent buffer so state dicts stay free of it.
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 320) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64).float()
        self.register_buffer("window", window, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            waveform.float(), self.n_fft, self.hop_length, window=self.window,
            center=True, pad_mode="reflect", return_complex=True,
        )
        re_im = torch.view_as_real(spec)
        # re^2 + im^2 in one fused pass; 5-7x faster than .abs()**2 or summing the last axis.
        power = torch.addcmul(re_im[..., 0].square(), re_im[..., 1], re_im[..., 1])  # (B, freq, frames)
        return power.transpose(1, 2).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"n_fft={self.n_fft}, hop_length={self.hop_length}"


class LogMel(nn.Module):
    """Power spectrogram (..., n_fft // 2 + 1) -> log-mel in dB (..., n_mels).

    ``melW`` is a persistent buffer with torchlibrosa's name and shape, so a
    checkpoint's matrix replaces the computed one on load.
    """

    melW: torch.Tensor

    def __init__(
        self, sample_rate: int = 32000, n_fft: int = 1024, n_mels: int = 64,
        fmin: float = 50.0, fmax: float | None = 14000.0, amin: float = 1e-10, ref: float = 1.0,
    ) -> None:
        super().__init__()
        self.amin = amin
        self.db_offset = 10.0 * math.log10(max(amin, ref))
        self.register_buffer("melW", torch.from_numpy(slaney_mel_filters(sample_rate, n_fft, n_mels, fmin, fmax)))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(power, self.melW.to(power.dtype))
        return 10.0 * torch.log10(mel.clamp(min=self.amin)) - self.db_offset


class LogMelFrontEnd(nn.Module):
    """Waveform (B, T) -> log-mel (B, 1, frames, n_mels), with torchlibrosa's key names.

    The encoders hold the two parts as their own top-level ``spectrogram_extractor``
    and ``logmel_extractor``, as the reference models do; this wrapper is for
    stand-alone use.

    >>> fe = LogMelFrontEnd(32000, 1024, 320)
    >>> fe(torch.zeros(2, 32000)).shape
    torch.Size([2, 1, 101, 64])
    """

    def __init__(
        self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
        mel_bins: int = 64, fmin: float = 50.0, fmax: float | None = 14000.0,
    ) -> None:
        super().__init__()
        self.spectrogram_extractor = PowerSpectrogram(window_size, hop_size)
        self.logmel_extractor = LogMel(sample_rate, window_size, mel_bins, fmin, fmax)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        out = self.logmel_extractor(self.spectrogram_extractor(waveform))
        return out.to(waveform.dtype) if waveform.is_floating_point() else out


class SpecAugment(nn.Module):
    """torchlibrosa's ``SpecAugmentation`` (drop stripes), vectorised and out of place.

    On (B, C, time, freq), in training only: per example, ``time_stripes`` bands of
    width in [0, time_width) frames and ``freq_stripes`` of width in [0, freq_width)
    bins are zeroed. Parameter-free, so it adds no state-dict keys.
    """

    def __init__(self, time_width: int = 64, time_stripes: int = 2, freq_width: int = 8, freq_stripes: int = 2) -> None:
        super().__init__()
        self.time_width, self.time_stripes = time_width, time_stripes
        self.freq_width, self.freq_stripes = freq_width, freq_stripes

    @staticmethod
    def _keep(batch: int, total: int, width: int, stripes: int, device: torch.device) -> torch.Tensor:
        widths = torch.randint(0, width, (batch, stripes), device=device)
        starts = (torch.rand(batch, stripes, device=device) * (total - widths)).long()
        pos = torch.arange(total, device=device)[None, None, :]
        dropped = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])
        return ~dropped.any(1)  # (B, total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, _, t, f = x.shape
        keep_t = self._keep(b, t, self.time_width, self.time_stripes, x.device)
        keep_f = self._keep(b, f, self.freq_width, self.freq_stripes, x.device)
        mask = keep_t[:, None, :, None] & keep_f[:, None, None, :]
        return x * mask.to(x.dtype)


__all__ = [
    "COMPONENT_FILE",
    "COMPONENT_WEIGHTS",
    "LogMel",
    "LogMelFrontEnd",
    "PowerSpectrogram",
    "STFT_KEYS",
    "SpecAugment",
    "load_reference_weights",
    "slaney_mel_filters",
    "torchlibrosa_ignored_keys",
    "frontend_settings",
]
