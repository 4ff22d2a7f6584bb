"""VGGish as a pengi-kit audio encoder of frames: each clip is cut into VGGish's examples (0.96 s
of 64-band log-mel, torchvggish's own front-end, ``vggish_input.waveform_to_examples``), and each
example becomes one 128-d frame, as torchvggish's ``VGG`` computes it (without the PCA
post-processing, which quantises to 8 bits). A clip shorter than one example is zero-padded to it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pengi_kit.errors import WeightsError

RATE = 16000
EXAMPLE = 15600  # samples of one example: 96 frames of 10 ms under a 25 ms window


class VGGishEncoder(nn.Module):
    """``forward(waveform (B, T), lengths (B,) or None)`` -> ``(frames (B, F, 128), mask (B, F))``:
    one frame per 0.96 s example of each clip (``lengths``: its samples in the zero-padded batch)."""

    sample_rate = RATE
    frames = True
    embed_dim = 128

    def __init__(self, vgg: nn.Module, clip_seconds: float | None = None) -> None:
        super().__init__()
        self.vgg, self.clip_seconds = vgg, clip_seconds

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvggish.vggish_input import waveform_to_examples

        b, t = waveform.shape
        sizes = [t] * b if lengths is None else lengths.tolist()
        examples = []
        for wav, n in zip(waveform.detach().float().cpu().numpy(), sizes):
            clip = np.pad(wav[:n], (0, max(0, EXAMPLE - n)))
            examples.append(waveform_to_examples(clip, RATE, return_tensor=True).detach())
        embedded = self.vgg(torch.cat(examples).to(waveform.device)).split([len(e) for e in examples])
        width = max(len(e) for e in embedded)
        frames = embedded[0].new_zeros(b, width, self.embed_dim)
        mask = torch.zeros(b, width, dtype=torch.bool, device=waveform.device)
        for i, e in enumerate(embedded):
            frames[i, :len(e)], mask[i, :len(e)] = e, True
        return frames, mask


def vggish(pretrained: str = "", clip_seconds: float | None = None) -> VGGishEncoder:
    """VGGish: ``pretrained`` a ``.pth`` state dict of torchvggish's ``VGG`` (its release file
    ``vggish-10086976.pth``, downloaded by the user); ``""`` a fresh one. ``clip_seconds``: the clip
    the loader gives (None: any length)."""
    from torchvggish.torchvggish import VGG, make_layers

    model = VGG(make_layers(), postprocess=False)
    if pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise WeightsError(f"{pretrained}: no such file; download torchvggish's vggish-10086976.pth and give "
                               "its path")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsError(f"{pretrained}: not a VGGish state dict (missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]}); give torchvggish's vggish-10086976.pth")
    return VGGishEncoder(model, clip_seconds)
