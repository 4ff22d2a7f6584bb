"""Audio encoders from timm image backbones over a log-mel spectrogram.

The waveform goes through pengi-kit's log-mel front-end
(:mod:`pengi_kit.components.frontend`), is normalised to roughly unit range and
fed to a one-channel timm model as an image of n_mels x frames (frequency as
height, time as width, as AST does). The timm model is built with
``num_classes=0``, so it returns its pooled features.

``pretrained`` is None/"" (random), a timm pretrained tag (``"augreg_in21k"`` for
``model_name``'s architecture, or in full ``"vit_base_patch16_224.augreg_in21k"``)
or a local timm weights file (``.safetensors``, ``.pth``, ``.bin``). timm adapts
image weights while loading: the 3-channel first convolution is summed to one
channel and a ViT's positional embeddings are resampled to the spectrogram grid.
A local file must hold every weight of the architecture under timm's names (the
classifier may differ or be absent); anything missing or unexpected is a
:class:`~pengi_kit.errors.WeightsError`.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import PatchEmbed
from torch import nn

from pengi_kit.components.frontend import LogMel, PowerSpectrogram, short
from pengi_kit.errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class LogMelTimm(nn.Module):
    """Waveform (B, T) -> log-mel image (B, 1, n_mels, frames) -> timm backbone -> (B, embed_dim).

    With ``clip_seconds`` set, the waveform is cropped or zero-padded to the clip, so
    that a backbone built for a fixed image size always gets that size.
    """

    def __init__(self, backbone: nn.Module, sample_rate: int, clip_seconds: float | None, n_mels: int,
                 window_size: int, hop_size: int, fmin: float, fmax: float | None,
                 norm_mean: float, norm_std: float) -> None:
        super().__init__()
        self.sample_rate, self.clip_seconds = int(sample_rate), clip_seconds
        self.norm_mean, self.norm_std = norm_mean, norm_std
        self.spectrogram_extractor = PowerSpectrogram(window_size, hop_size)
        self.logmel_extractor = LogMel(sample_rate, window_size, n_mels, fmin, fmax)
        self.backbone = backbone
        self.embed_dim = int(backbone.num_features)

    @property
    def clip_samples(self) -> int | None:
        return int(round(self.clip_seconds * self.sample_rate)) if self.clip_seconds else None

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        need = self.clip_samples
        if need is not None and waveform.shape[-1] != need:
            waveform = nn.functional.pad(waveform[..., :need], (0, max(0, need - waveform.shape[-1])))
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))  # (B, 1, frames, n_mels)
        x = ((x - self.norm_mean) / self.norm_std).transpose(2, 3)  # (B, 1, n_mels, frames)
        return self.backbone(x.to(waveform.dtype))


def frames(sample_rate: int, clip_seconds: float, hop_size: int) -> int:
    """Spectrogram frames of one clip (centred STFT)."""
    return int(round(clip_seconds * sample_rate)) // hop_size + 1


class StridedPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with patches taken every ``stride`` pixels (AST's overlapping
    16x16 patches at stride 10); the grid is (size - patch) // stride + 1 per axis."""

    def __init__(self, *args: Any, stride: int | None = None, **kwargs: Any) -> None:
        self.stride = stride
        super().__init__(*args, **kwargs)
        if stride:
            self.proj.stride = (stride, stride)

    def _init_img_size(self, img_size: Any) -> Any:
        img_size, grid_size, num_patches = super()._init_img_size(img_size)
        if img_size is not None and self.stride:
            grid_size = tuple((s - p) // self.stride + 1 for s, p in zip(img_size, self.patch_size))
            num_patches = grid_size[0] * grid_size[1]
        if grid_size is not None and min(grid_size) < 1:
            raise ValueError(f"a spectrogram of {img_size[0]} mel bins x {img_size[1]} frames is smaller than one "
                             f"{self.patch_size[0]}x{self.patch_size[1]} patch; use more n_mels or a longer clip")
        return img_size, grid_size, num_patches


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _is_path(pretrained: str) -> bool:
    return Path(pretrained).suffix in WEIGHT_SUFFIXES or "/" in pretrained or "\\" in pretrained


def _check_local_weights(model: nn.Module, path: Path) -> None:
    """That the file holds the whole architecture of ``model`` (its head aside)."""
    try:
        weights = timm.models.load_state_dict(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever the reader raises, the file holds no weights
        raise WeightsError(f"{path}: cannot be read as weights ({_first_line(exc)})") from None
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    own = model.state_dict()
    missing = [k for k in own if k not in weights and not is_head(k)]
    unexpected = [k for k in weights if k not in own and not is_head(k)]
    problems = [f"{what} {short(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if problems:
        raise WeightsError(f"{path}: not timm weights of {model.pretrained_cfg.get('architecture')}: "
                           + "; ".join(problems))


def create_backbone(model_name: str, pretrained: str | None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, in_chans=1, num_classes=0, **kwargs)`` with weights from
    ``pretrained``: None/"" (random), a timm tag, or a local weights file."""
    kwargs = {"in_chans": 1, "num_classes": 0, **kwargs}
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    if _is_path(pretrained) or Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found; give a local timm weights file or a timm "
                               f"pretrained tag such as '{model_name}.<tag>'")
        # first the file's keys against the architecture's: timm adapts weights non-strictly
        _check_local_weights(timm.create_model(model_name, pretrained=False, **kwargs), path)
        try:
            # a state dict; only big_vision's .npz takes the architecture's own loader (custom_load)
            overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
            return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except RuntimeError as exc:  # unreadable, or tensors of the wrong shape
            raise WeightsError(f"{path}: cannot be loaded into {model_name} ({_first_line(exc)})") from None
    arch, dot, tag = pretrained.partition(".")
    if not dot:
        arch, tag = model_name, pretrained
    if arch != model_name:
        raise ValueError(f"pretrained = {pretrained!r} is for {arch}, but model_name is {model_name!r}; "
                         f"set model_name = {arch!r}")
    name = f"{arch}.{tag}"
    if not timm.is_model_pretrained(name):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise WeightsError(f"timm has no pretrained weights {name!r}; tags of {arch}: {', '.join(tags) or 'none'}")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as exc:  # offline or unreachable hub, not in the local cache
        raise WeightsError(f"timm weights {name!r} could not be fetched ({_first_line(exc)}); download them once with "
                           "network access (they are cached), or pass a local weights file") from None


def timm_ast(
    sample_rate: int = 16000,
    clip_seconds: float = 10.24,
    n_mels: int = 128,
    window_size: int = 512,
    hop_size: int = 160,
    fmin: float = 50.0,
    fmax: float | None = 8000.0,
    model_name: str = "vit_base_patch16_224",
    pretrained: str | None = None,
    patch_stride: int | None = 10,
    norm_mean: float = -40.0,
    norm_std: float = 40.0,
    model_args: dict[str, Any] | None = None,
) -> LogMelTimm:
    """An Audio Spectrogram Transformer (Gong et al. 2021) from a timm ViT.

    The ViT sees one clip's log-mel as a one-channel image of ``n_mels`` x frames
    (10.24 s at hop 160: 128 x 1025), cut into ``model_name``'s patches every
    ``patch_stride`` bins/frames (AST: 16x16 at stride 10; None: non-overlapping).
    The embedding is the ViT's pooled output (class token unless ``model_args``
    sets ``global_pool``). ``model_args`` go to ``timm.create_model`` (e.g.
    ``{depth = 4, embed_dim = 192, num_heads = 3}``). ``norm_mean``/``norm_std``
    scale the log-mel in dB to about unit range; set them from your data.
    """
    image = (n_mels, frames(sample_rate, clip_seconds, hop_size))
    embed_layer = partial(StridedPatchEmbed, stride=patch_stride) if patch_stride else PatchEmbed
    backbone = create_backbone(model_name, pretrained, img_size=image, embed_layer=embed_layer,
                               **(model_args or {}))
    return LogMelTimm(backbone, sample_rate, clip_seconds, n_mels, window_size, hop_size, fmin, fmax,
                      norm_mean, norm_std)


def timm_efficientnet(
    sample_rate: int = 16000,
    clip_seconds: float | None = 10.0,
    n_mels: int = 128,
    window_size: int = 512,
    hop_size: int = 160,
    fmin: float = 50.0,
    fmax: float | None = 8000.0,
    model_name: str = "efficientnet_b0",
    pretrained: str | None = None,
    norm_mean: float = -40.0,
    norm_std: float = 40.0,
    model_args: dict[str, Any] | None = None,
) -> LogMelTimm:
    """A timm EfficientNet (any efficientnet_*/tf_efficientnet_*/tinynet_* name) over the
    log-mel as a one-channel image; the embedding is its globally pooled features
    (efficientnet_b0: 1280). It takes any clip length: ``clip_seconds = None`` leaves
    the waveform uncropped. ``model_args`` go to ``timm.create_model``.
    """
    backbone = create_backbone(model_name, pretrained, **(model_args or {}))
    return LogMelTimm(backbone, sample_rate, clip_seconds, n_mels, window_size, hop_size, fmin, fmax,
                      norm_mean, norm_std)


__all__ = ["LogMelTimm", "StridedPatchEmbed", "create_backbone", "timm_ast", "timm_efficientnet"]
