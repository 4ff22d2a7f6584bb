"""A small CNN audio encoder over log-mels: the component of this template.

Replace it with yours. What pengi-kit needs from an audio encoder (see
``pengi_kit/contracts.py``): an ``nn.Module`` with ``sample_rate`` (int),
``clip_seconds`` (float or None) and ``embed_dim`` (int) that maps a (B, T) waveform in
[-1, 1] to (B, embed_dim). Its constructor arguments are the keys of the recipe's
``[model.audio_encoder]`` table, checked against their annotations by ``pengi-kit validate``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pengi_kit.components.frontend import LogMel, PowerSpectrogram, load_strict
from pengi_kit.errors import WeightsError


class ConvEncoder(nn.Module):
    """Waveform -> log-mel (B, 1, frames, n_mels) -> conv blocks -> pooled -> (B, embed_dim).

    Each block is conv 3x3, batch norm, ReLU and 2x2 average pooling, doubling the
    channels. ``pretrained`` is a local ``.safetensors`` or torch file holding this
    encoder's state dict, loaded strictly.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        clip_seconds: float | None = 1.0,
        n_mels: int = 64,
        window_size: int = 512,
        hop_size: int = 160,
        channels: int = 16,
        num_blocks: int = 3,
        embed_dim: int = 128,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate, self.clip_seconds, self.embed_dim = int(sample_rate), clip_seconds, embed_dim
        self.spectrogram_extractor = PowerSpectrogram(window_size, hop_size)
        self.logmel_extractor = LogMel(sample_rate, window_size, n_mels, fmin=50.0, fmax=sample_rate / 2)
        self.bn0 = nn.BatchNorm2d(1)  # puts the log-mel in dB on a unit scale
        blocks, width = [], 1
        for i in range(num_blocks):
            out = channels * 2**i
            blocks += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(), nn.AvgPool2d(2)]
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.proj = nn.Linear(width, embed_dim)
        if pretrained:
            load_weights(self, pretrained)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.logmel_extractor(self.spectrogram_extractor(waveform)).to(waveform.dtype)
        x = self.blocks(self.bn0(x))  # (B, C, frames', mels')
        x = x.mean(dim=3)  # over frequency
        return self.proj(x.amax(dim=2) + x.mean(dim=2))  # over time


def load_weights(model: nn.Module, path: str) -> None:
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"{file}: weights file not found; give a local .safetensors or torch state dict")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    load_strict(model, state, f"{file} ({type(model).__name__})")
