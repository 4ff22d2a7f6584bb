"""PANNs Cnn14 audio encoder (Kong et al. 2020, qiuqiangkong/audioset_tagging_cnn).

Attribute names follow the reference ``Cnn14`` / ``Cnn14_16k`` so that a PANNs
checkpoint (``{"model": state_dict}``) loads by name: ``spectrogram_extractor``
(STFT kernels knowingly ignored, see :mod:`pengi_kit.components.frontend`),
``logmel_extractor.melW``, ``bn0``, ``conv_block1..6.{conv1,bn1,conv2,bn2}``,
``fc1``, ``fc_audioset``.

>>> model = cnn14(sample_rate=16000, width=8).eval()
>>> model(torch.zeros(2, 16000)).shape
torch.Size([2, 256])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.components.frontend import (
    LogMel, PowerSpectrogram, SpecAugment, frontend_settings, load_reference_weights,
)

# sample rate -> (window, hop, fmax) of the published Cnn14 (32 kHz) and Cnn14_16k, which the
# PANNs importer recognises; frontend_settings derives the same from the rate.
FRONTEND_SETTINGS = {32000: (1024, 320, 14000.0), 16000: (512, 160, 8000.0)}
MEL_BINS = 64


class ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor, pool: tuple[int, int] = (2, 2)) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool != (1, 1) else x


class Cnn14(nn.Module):
    """Waveform (B, T) -> embedding (B, embed_dim); ``forward_dict`` adds AudioSet
    probabilities. ``width`` = channels of the first block (64 in the published model).
    """

    def __init__(
        self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
        fmin: float = 50.0, fmax: float = 14000.0, width: int = 64, num_classes: int = 527,
        clip_seconds: float | None = 10.0, spec_augment: bool = True,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.window_size = window_size
        self.embed_dim = 32 * width

        self.spectrogram_extractor = PowerSpectrogram(window_size, hop_size)
        self.logmel_extractor = LogMel(sample_rate, window_size, MEL_BINS, fmin, fmax)
        self.spec_augmenter = SpecAugment(64, 2, 8, 2) if spec_augment else nn.Identity()
        self.bn0 = nn.BatchNorm2d(MEL_BINS)
        channels = [1] + [width * 2**i for i in range(6)]
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", ConvBlock(channels[i], channels[i + 1]))
        self.fc1 = nn.Linear(self.embed_dim, self.embed_dim)
        self.fc_audioset = nn.Linear(self.embed_dim, num_classes)
        for fc in (self.fc1, self.fc_audioset):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def _hidden(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform -> relu(fc1(pooled features)), before the final dropout."""
        x = self.logmel_extractor(self.spectrogram_extractor(waveform)).to(waveform.dtype)  # (B, 1, T, mel)
        # BatchNorm over mel bins; contiguous() because the transposed strides send every
        # later conv/BN/pool to slow kernels (10x on CPU).
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3).contiguous()
        x = self.spec_augmenter(x)
        for i in range(1, 7):
            block: ConvBlock = getattr(self, f"conv_block{i}")
            x = F.dropout(block(x, (2, 2) if i < 6 else (1, 1)), p=0.2, training=self.training)
        x = x.mean(dim=3)  # over frequency
        x = x.amax(dim=2) + x.mean(dim=2)  # over time
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))

    def forward_dict(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self._hidden(waveform)
        # The reference classifies the pre-dropout activation and returns the dropped-out one.
        return {
            "embedding": F.dropout(hidden, p=0.5, training=self.training),
            "clipwise_output": torch.sigmoid(self.fc_audioset(hidden)),
        }

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # fc_audioset does not feed the embedding, so it is skipped here.
        return F.dropout(self._hidden(waveform), p=0.5, training=self.training)


def cnn14(
    sample_rate: int = 32000,
    width: int = 64,
    clip_seconds: float | None = 10.0,
    num_classes: int = 527,
    pretrained: str | None = None,
    spec_augment: bool = True,
    window_size: int | None = None,
    hop_size: int | None = None,
    fmax: float | None = None,
) -> Cnn14:
    """Build Cnn14 (32 kHz: window 1024, hop 320, 50-14000 Hz) or Cnn14_16k (16 kHz:
    window 512, hop 160, 50-8000 Hz); 64 mel bins. ``width=64`` is the published
    model (embed_dim 2048, about 80.8M parameters). ``window_size``, ``hop_size`` and
    ``fmax`` not given follow from ``sample_rate`` (see
    :func:`~pengi_kit.components.frontend.frontend_settings`: 32 ms, 10 ms, at most 14 kHz;
    the published values at 16 and 32 kHz), so setting the data's rate is enough; given
    ones win (Microsoft CLAP 2022: 44100, 1024, 320, 14000). ``pretrained`` is a local
    PANNs checkpoint (``{"model": state_dict}``) or a folder written by ``pengi-kit
    import`` (whose recorded build arguments must match these), loaded strictly.
    """
    if width < 1:
        raise ValueError(f"cnn14: width must be a positive integer, got {width}")
    window, hop, top = frontend_settings(sample_rate, window_size, hop_size, fmax)
    model = Cnn14(sample_rate, window, hop, 50.0, top, width, num_classes, clip_seconds, spec_augment)
    if pretrained:  # None or "" means random initialisation
        build_args = dict(sample_rate=sample_rate, width=width, num_classes=num_classes, window_size=window,
                          hop_size=hop, fmax=top)
        load_reference_weights(model, pretrained, n_fft=window, component="cnn14", build_args=build_args)
    return model


__all__ = ["Cnn14", "ConvBlock", "cnn14"]
