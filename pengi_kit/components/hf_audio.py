"""Any transformers audio model with a feature extractor as a frame encoder: AST, wav2vec2, HuBERT,
WavLM, Data2Vec-Audio ... from a hub id, a local folder, or a fresh config.

The waveforms go through the model's own feature extractor (per clip, at its true length) and the
model; the output is the last hidden state, with a mask from the model's own output lengths
(``_get_feat_extract_output_lengths``; every frame for models whose input has a fixed size, such
as AST's 1024 frames). A model whose convolutional front-end normalises over time with group norm
(``feat_extract_norm = "group"``: wav2vec2-base, HuBERT-base) sees a batch's padding, so its clips
are encoded one by one: a clip gives the same frames alone or in any batch. The clip embedding is
``pooling``: the mean over the mask, the first frame (a CLS token), or the mean of the first two
(AST's CLS and distillation tokens: its ``pooler_output``).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import nn

from pengi_kit.components._hf import hf_load, hf_model

POOLINGS = ("mean", "first", "first-two")


class HFAudioEncoder(nn.Module):
    """``forward(waveform (B, T), lengths (B,) or None)`` -> ``(frames (B, F, hidden), mask (B, F))``."""

    frames = True
    clip_seconds = None

    def __init__(self, model: nn.Module, feature_extractor: Any, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"hf-audio: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.model, self.feature_extractor, self.pooling = model, feature_extractor, pooling
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.embed_dim = int(model.config.hidden_size)
        self.one_by_one = getattr(model.config, "feat_extract_norm", None) == "group"

    def requires_grad_(self, requires_grad: bool = True) -> "HFAudioEncoder":
        """Freezing also tells wav2vec2-type convolutional front-ends, which otherwise mark their
        output as needing gradients in training mode."""
        super().requires_grad_(requires_grad)
        front = getattr(self.model, "feature_extractor", None)
        if hasattr(front, "_requires_grad"):
            front._requires_grad = requires_grad
        return self

    def _run(self, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.feature_extractor(clips, sampling_rate=self.sample_rate, padding=True, return_tensors="pt",
                                        return_attention_mask=True)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_values", "input_features",
                                                                       "attention_mask")}
        if self.one_by_one:  # group norm over time: no padding to see, no mask to give
            inputs.pop("attention_mask", None)
        out = self.model(**inputs)
        frames = out.last_hidden_state
        counts = torch.full((len(clips),), frames.shape[1], device=device)
        if hasattr(self.model, "_get_feat_extract_output_lengths"):
            samples = torch.tensor([len(c) for c in clips], device=device)
            counts = self.model._get_feat_extract_output_lengths(samples).clamp(max=frames.shape[1])
        mask = torch.arange(frames.shape[1], device=device)[None, :] < counts[:, None]
        return frames, mask

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        clips = [w[: int(n)].detach().float().cpu().numpy() for w, n in
                 zip(waveform, lengths if lengths is not None else [waveform.shape[1]] * len(waveform))]
        if not self.one_by_one:
            return self._run(clips)
        parts = [self._run([c]) for c in clips]
        width = max(f.shape[1] for f, _ in parts)
        frames = parts[0][0].new_zeros(len(parts), width, self.embed_dim)
        mask = torch.zeros(len(parts), width, dtype=torch.bool, device=frames.device)
        for i, (f, m) in enumerate(parts):
            frames[i, :f.shape[1]], mask[i, :m.shape[1]] = f[0], m[0]
        return frames, mask

    def pool(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The clip embedding (B, hidden) by ``pooling``."""
        if self.pooling == "first":
            return frames[:, 0]
        if self.pooling == "first-two":
            return (frames[:, 0] + frames[:, 1]) / 2
        weight = mask.to(frames.dtype)[..., None]
        return (frames * weight).sum(1) / weight.sum(1).clamp(min=1)


def hf_audio(pretrained: str = "", architecture: str = "wav2vec2", pooling: str = "mean",
             config: dict[str, Any] | None = None) -> HFAudioEncoder:
    """A transformers audio model (``pretrained``: a hub id or a local folder with its feature
    extractor's config), or with ``pretrained = ""`` a fresh ``architecture`` (``wav2vec2``,
    ``hubert``, ``wavlm``, ``data2vec-audio``, ``audio-spectrogram-transformer`` ...) of the
    ``config`` table given (transformers' config keys, e.g. ``{hidden_size = 256, num_hidden_layers
    = 4}``), with that architecture's default feature extractor."""
    import transformers
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES

    if pretrained:
        extractor = hf_load(AutoFeatureExtractor.from_pretrained, pretrained, "feature extractor")
        return HFAudioEncoder(hf_model(AutoModel, pretrained, "audio model"), extractor, pooling)
    if architecture not in FEATURE_EXTRACTOR_MAPPING_NAMES:
        raise ValueError(f"hf-audio: {architecture!r} has no feature extractor in transformers (audio models: "
                         "wav2vec2, hubert, wavlm, data2vec-audio, audio-spectrogram-transformer ...)")
    model = AutoModel.from_config(AutoConfig.for_model(architecture, **(config or {})))
    extractor_cls = getattr(transformers, FEATURE_EXTRACTOR_MAPPING_NAMES[architecture])
    accepted = inspect.signature(extractor_cls.__init__).parameters  # e.g. AST's num_mel_bins and max_length
    shared = {k: getattr(model.config, k) for k in accepted if k not in ("self", "kwargs") and hasattr(model.config, k)}
    return HFAudioEncoder(model, extractor_cls(**shared), pooling)
