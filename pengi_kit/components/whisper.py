"""Whisper's audio encoder (through transformers) with Whisper's own log-mel front-end: a
sequence of frames per clip, not one embedding.

The front-end computes what transformers' ``WhisperFeatureExtractor`` computes (a 400-point
STFT with a hop of 160 at 16 kHz, its Slaney mel filters, log10, floored 8 below the window's
maximum, then ``(x + 4) / 4``) in torch, batched, on the model's device. Whisper reads 30 s
windows (``max_source_positions`` frames of 20 ms: 1500): a clip is zero-padded to whole
windows, each window is encoded as Whisper encodes it, and the windows' frames are joined, so
that a clip longer than 30 s gives consecutive windows' frames. Only the frames that cover
the clip are kept (``ceil(samples / 320)``), with a mask: a batch's shorter clips give the
same frames as they would alone.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from pengi_kit.components._hf import LoRA, hf_model, inject_lora, lora_parameters, merge_lora

RATE, HOP = 16000, 160
SAMPLES_PER_FRAME = 2 * HOP  # the encoder's second convolution has stride 2


class WhisperFrontEnd(nn.Module):
    """Waveform windows (N, window samples) at 16 kHz -> log-mel features (N, n_mels, frames)."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        from transformers import WhisperFeatureExtractor

        filters = WhisperFeatureExtractor(feature_size=n_mels).mel_filters  # (201, n_mels), Slaney
        self.register_buffer("filters", torch.from_numpy(filters).float().T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(400), persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(windows.float(), 400, HOP, window=self.window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        log = torch.clamp(self.filters @ power, min=1e-10).log10()
        log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log + 4.0) / 4.0


class WhisperAudioEncoder(nn.Module):
    """``forward(waveform (B, T), lengths (B,) or None)`` -> ``(frames (B, F, d_model), mask (B, F))``.

    ``lengths``: each clip's samples in a zero-padded batch (None: all T). ``frames = True``
    tells the model that this encoder gives frames, not one embedding per clip."""

    frames = True
    sample_rate = RATE
    clip_seconds = None

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        config = encoder.config
        self.encoder = encoder
        self.frontend = WhisperFrontEnd(config.num_mel_bins)
        self.embed_dim = int(config.d_model)
        self.window_frames = int(config.max_source_positions)
        self.window = self.window_frames * SAMPLES_PER_FRAME  # 480000 samples: 30 s
        # what an encoder folder records, so that it rebuilds this encoder (a hub model's own sizes)
        self.build_args = {k: int(getattr(config, k)) for k in SIZES}

    def add_adapters(self, lora: LoRA) -> None:
        """LoRA adapters (peft) on the encoder's attention (default: q/k/v/out_proj); the model
        freezes the encoder's own weights and trains the adapters."""
        inject_lora(self.encoder, lora, list(lora.target_modules) or ["q_proj", "k_proj", "v_proj", "out_proj"],
                    "Whisper's encoder", "model.audio_encoder.lora.target_modules")

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        return lora_parameters(self.encoder)

    def merge_adapters(self) -> None:
        """Fold the adapters into the encoder's weights and remove them."""
        merge_lora(self.encoder)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = waveform.shape
        windows = max(1, math.ceil(t / self.window))
        padded = nn.functional.pad(waveform, (0, windows * self.window - t)).reshape(b * windows, self.window)
        hidden = self.encoder(self.frontend(padded)).last_hidden_state  # (b * windows, window_frames, d)
        hidden = hidden.reshape(b, windows * self.window_frames, -1)
        lengths = torch.full((b,), t, device=waveform.device) if lengths is None else lengths.to(waveform.device)
        keep = ((lengths + SAMPLES_PER_FRAME - 1) // SAMPLES_PER_FRAME).clamp(min=1)
        width = int(keep.max())
        mask = torch.arange(width, device=waveform.device)[None, :] < keep[:, None]
        return hidden[:, :width], mask


SIZES = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
         "max_source_positions")
BASE = {"num_mel_bins": 80, "d_model": 512, "encoder_layers": 6, "encoder_attention_heads": 8,
        "max_source_positions": 1500}  # whisper-base


def whisper(pretrained: str = "", num_mel_bins: int | None = None, d_model: int | None = None,
            encoder_layers: int | None = None, encoder_attention_heads: int | None = None,
            encoder_ffn_dim: int | None = None, max_source_positions: int | None = None,
            lora: LoRA | None = None) -> WhisperAudioEncoder:
    """The encoder of a Whisper checkpoint (``pretrained``: a hub id such as ``openai/whisper-tiny``
    ... ``openai/whisper-large-v3`` (128 mel bins), or a local folder saved by transformers), an
    encoder folder that pengi-kit wrote (a pretrained tagger's export: its sizes are recorded
    there), or with ``pretrained = ""`` (the default) a fresh encoder (whisper-base's sizes unless given;
    ``max_source_positions`` frames of 20 ms per window: 1500 is Whisper's 30 s, tests use
    shorter windows). Sizes given beside a checkpoint must be the checkpoint's. ``lora``
    (``[model.audio_encoder.lora]``, with ``trainable = false``): adapters on the frozen encoder.
    """
    model = _whisper(pretrained, num_mel_bins, d_model, encoder_layers, encoder_attention_heads, encoder_ffn_dim,
                     max_source_positions)
    if lora is not None:
        model.add_adapters(LoRA(**lora) if isinstance(lora, dict) else lora)
    return model


def _whisper(pretrained: str, num_mel_bins: int | None, d_model: int | None, encoder_layers: int | None,
             encoder_attention_heads: int | None, encoder_ffn_dim: int | None,
             max_source_positions: int | None) -> WhisperAudioEncoder:
    from transformers import WhisperConfig, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from pengi_kit.errors import WeightsError
    from pengi_kit.folders import COMPONENT_FILE, load_strict, read_encoder_folder, read_json

    given = {k: v for k, v in dict(num_mel_bins=num_mel_bins, d_model=d_model, encoder_layers=encoder_layers,
                                   encoder_attention_heads=encoder_attention_heads, encoder_ffn_dim=encoder_ffn_dim,
                                   max_source_positions=max_source_positions).items() if v is not None}
    folder = Path(pretrained) / COMPONENT_FILE if pretrained else None
    if pretrained and not folder.is_file():
        model = WhisperAudioEncoder(hf_model(WhisperModel, pretrained, "Whisper model").get_encoder())
        wrong = {k: v for k, v in given.items() if model.build_args[k] != v}
        if wrong:
            raise WeightsError(f"{pretrained} has {', '.join(f'{k} = {model.build_args[k]}' for k in wrong)}, not "
                               f"{', '.join(f'{k} = {v}' for k, v in wrong.items())}; remove those keys")
        return model
    sizes = {**BASE, **(read_json(folder, "no component.json").get("args", {}) if folder else {}), **given}
    sizes = {k: sizes[k] for k in SIZES if k in sizes}
    sizes.setdefault("encoder_ffn_dim", 4 * sizes["d_model"])
    model = WhisperAudioEncoder(WhisperEncoder(WhisperConfig(**sizes, decoder_layers=1)))
    if folder:
        load_strict(model, read_encoder_folder(Path(pretrained), "whisper", sizes), f"{pretrained} (whisper)")
    return model
