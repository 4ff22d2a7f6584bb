"""Tiny reference checkpoints in the published layouts, built for the importer tests.

Each builder makes pengi-kit modules with random weights and writes their state dict
under the reference key names (as read from the reference code: microsoft/Pengi,
PANNs, LAION-AI/CLAP, microsoft/CLAP), in the same container, with the DDP
``module.`` prefix, torchlibrosa's genuine STFT kernels and mel matrix, and the
buffers older transformers versions saved. The modules themselves are returned too:
they are "the same weights loaded directly", the parity baseline.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

from pengi_kit.components.cnn14 import cnn14
from pengi_kit.components.hf_causal_lm import gpt2
from pengi_kit.components.hf_text import clip_text
from pengi_kit.components.htsat import htsat

# A small HTS-AT with the published structure: two stages (the first shifts its
# windows, so its second block stores an attention mask), token-semantic head.
TINY_HTSAT = dict(mel_bins=16, spec_size=64, patch_embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                  attn_window_size=8, num_classes=10, spec_augment=False)


def torchlibrosa_front_end(sr: int, n_fft: int, hop: int, n_mels: int, fmin: float, fmax: float,
                           prefix: str = "") -> dict[str, torch.Tensor]:
    """torchlibrosa's own state-dict entries: STFT kernels and the librosa mel matrix."""
    spec = Spectrogram(n_fft=n_fft, hop_length=hop, win_length=n_fft, window="hann", center=True,
                       pad_mode="reflect", freeze_parameters=True)
    mel = LogmelFilterBank(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, ref=1.0, amin=1e-10,
                           top_db=None, freeze_parameters=True)
    out = {f"{prefix}spectrogram_extractor.{k}": v for k, v in spec.state_dict().items()}
    out.update({f"{prefix}logmel_extractor.{k}": v for k, v in mel.state_dict().items()})
    return out


def with_torchlibrosa(module: torch.nn.Module, sr: int, n_fft: int, hop: int, n_mels: int, fmin: float,
                      fmax: float) -> dict[str, torch.Tensor]:
    """The encoder's state dict as the reference stores it; the module takes the librosa
    mel matrix too, so both sides compute the same features."""
    ref = torchlibrosa_front_end(sr, n_fft, hop, n_mels, fmin, fmax)
    module.logmel_extractor.melW.copy_(ref["logmel_extractor.melW"])
    return {**{k: v.clone() for k, v in module.state_dict().items()}, **ref}


def tiny_htsat(seed: int = 0, **front) -> torch.nn.Module:
    torch.manual_seed(seed)
    return htsat("tiny", **{**TINY_HTSAT, **front}).eval()


def tiny_cnn14(seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cnn14(**{"width": 4, "num_classes": 10, "spec_augment": False, **kwargs}).eval()


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial values for every float tensor (batch-norm statistics, LayerNorms ...)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point() or name.endswith("melW"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.add_(torch.randn(t.shape, generator=gen) * 0.02)


def save_hf_dir(component: torch.nn.Module, folder: Path) -> Path:
    """A tiny hub-like folder (config, tokenizer, weights) from a pengi-kit HF component."""
    folder.mkdir(parents=True, exist_ok=True)
    component.model.save_pretrained(folder)
    component.tokenizer.save_pretrained(folder)
    return folder


def tiny_gpt2_dir(folder: Path, n_embd: int = 32) -> Path:
    torch.manual_seed(1)
    return save_hf_dir(gpt2(pretrained="", n_layer=1, n_embd=n_embd, n_head=2, n_positions=160), folder)


def tiny_clip_dir(folder: Path) -> Path:
    torch.manual_seed(2)
    return save_hf_dir(clip_text(pretrained="", hidden_size=16, num_layers=1, num_heads=2, projection_dim=12,
                                 max_positions=48), folder)


def module_prefixed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in sd.items()}


def old_transformers_gpt2_buffers(prefix: str, n_layer: int, n_positions: int) -> dict[str, torch.Tensor]:
    """What transformers < 4.31 also saved for GPT-2: causal-mask constants per block."""
    out = {}
    for i in range(n_layer):
        out[f"{prefix}transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_positions, n_positions,
                                                                            dtype=torch.bool))[None, None]
        out[f"{prefix}transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out
