"""HTS-AT audio encoder (Chen et al., ICASSP 2022), the audio tower of Pengi and
LAION-CLAP, written from the paper and the public reference implementations.

A log-mel spectrogram (B, 1, frames, 64) is batch-normalised over mel bins,
interpolated to ``freq_ratio * spec_size`` frames (1024) and folded into a
``spec_size`` x ``spec_size`` image (four time segments stacked along frequency),
which a Swin Transformer with a token-semantic head reads. The embedding is the
average of the final tokens (768-d for ``tiny``).

Module names follow the reference ``HTSAT_Swin_Transformer`` state dict, so
importers only strip a prefix (``audio_encoder.base.htsat.`` for Pengi,
``audio_branch.`` for LAION-CLAP): ``spectrogram_extractor`` (STFT kernels knowingly
ignored, see :mod:`pengi_kit.components.frontend`), ``logmel_extractor.melW``,
``bn0``, ``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1, attn.qkv,
attn.proj, attn.relative_position_bias_table, attn.relative_position_index,
attn_mask (shifted blocks only), norm2, mlp.fc1, mlp.fc2}``,
``layers.{i}.downsample.{reduction,norm}``, ``norm``, ``tscam_conv``, ``head``.
``head`` exists in the reference but is unused by its token-semantic path; it is
kept only so checkpoints load strictly.

>>> model = htsat("tiny", spec_size=64, mel_bins=16, patch_embed_dim=8, depths=(1, 1),
...               num_heads=(1, 2), attn_window_size=4, sample_rate=16000,
...               window_size=512, hop_size=160, fmax=8000).eval()
>>> model(torch.zeros(2, 16000)).shape
torch.Size([2, 16])
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.components.frontend import (
    LogMel, PowerSpectrogram, SpecAugment, frontend_settings, load_reference_weights,
)

# The published sizes, by the factory's ``variant``: the one place they are written. All
# share window 8, spec 256, patch 4 and stride 4; the embedding is patch_embed_dim * 8.
HTSAT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"patch_embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (4, 8, 16, 32)},
    "base": {"patch_embed_dim": 128, "depths": (2, 2, 12, 2), "num_heads": (4, 8, 16, 32)},
    "large": {"patch_embed_dim": 256, "depths": (2, 2, 12, 2), "num_heads": (4, 8, 16, 32)},
}
# Pengi evaluates clips longer than the 1024-frame canvas as the mean over crops of
# 689 frames every 344 (hard-coded there); scaled here for other canvas sizes.
LONG_CLIP_CROP_FRACTION = 689 / 1024


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per example while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Image (B, 1, H, W) -> tokens (B, H/stride * W/stride, dim)."""

    def __init__(self, patch_size: int, patch_stride: int, dim: int) -> None:
        super().__init__()
        pad = (patch_size - patch_stride) // 2
        self.proj = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_stride, padding=pad)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C), windows in row-major order."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(windows: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    relative_position_index: torch.Tensor

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        span = torch.arange(window_size)
        coords = torch.stack(torch.meshgrid(span, span, indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        # Persistent, as in the reference, so its checkpoints load strictly.
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window_size - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if mask is not None:
            # Split windows from batch so the per-window shift mask broadcasts.
            nw = mask.shape[0]
            q, k, v = (t.reshape(bw // nw, nw, self.num_heads, n, -1) for t in (q, k, v))
            bias = bias.unsqueeze(0) + mask.unsqueeze(1)  # (nW, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.reshape(bw, self.num_heads, n, -1).transpose(1, 2).reshape(bw, n, c))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and MLP, each pre-norm with a residual."""

    attn_mask: torch.Tensor | None

    def __init__(
        self, dim: int, resolution: tuple[int, int], num_heads: int, window_size: int,
        shift: bool, mlp_ratio: float = 4.0, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window_size, self.shift_size = window_size, window_size // 2 if shift else 0
        if min(resolution) <= window_size:  # one window covers the map: no shift
            self.window_size, self.shift_size = min(resolution), 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # A (persistent, as in the reference) buffer only for shifted blocks.
        self.register_buffer("attn_mask", self._shift_mask() if self.shift_size else None)

    def _shift_mask(self) -> torch.Tensor:
        h, w = self.resolution
        ws, s = self.window_size, self.shift_size
        region = torch.zeros(1, h, w, 1)
        cuts = (slice(0, -ws), slice(-ws, -s), slice(-s, None))
        for i, (hs, wsl) in enumerate((a, b) for a in cuts for b in cuts):
            region[:, hs, wsl, :] = i
        ids = window_partition(region, ws).squeeze(-1)  # (nW, ws*ws)
        diff = ids.unsqueeze(1) - ids.unsqueeze(2)
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift_size:
            y = torch.roll(y, (-self.shift_size, -self.shift_size), (1, 2))
        y = self.attn(window_partition(y, self.window_size), self.attn_mask)
        y = window_reverse(y, self.window_size, h, w)
        if self.shift_size:
            y = torch.roll(y, (self.shift_size, self.shift_size), (1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Merge 2x2 neighbouring tokens: (B, H*W, C) -> (B, H/2*W/2, 2C)."""

    def __init__(self, resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        # Order (even,even), (odd,even), (even,odd), (odd,odd) as in the reference weights.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks alternating plain and shifted windows, then merging."""

    def __init__(
        self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
        mlp_ratio: float, drop_path: Sequence[float], downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, resolution, num_heads, window_size, i % 2 == 1, mlp_ratio, drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class HTSAT(nn.Module):
    """Waveform (B, T) -> embedding (B, embed_dim = patch_embed_dim * 2**(stages-1)).

    ``forward_dict`` also returns the token-semantic head's clip-wise and frame-wise
    (over the 1024 interpolated frames) AudioSet probabilities.
    """

    def __init__(
        self,
        *,  # no defaults: :func:`htsat` holds them, and the sizes are HTSAT_PRESETS
        sample_rate: int,
        clip_seconds: float | None,
        mel_sample_rate: int | None,
        window_size: int,
        hop_size: int,
        mel_bins: int,
        fmin: float,
        fmax: float | None,
        spec_size: int,
        patch_embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        attn_window_size: int,
        drop_path_rate: float,
        num_classes: int,
        spec_augment: bool,
        patch_size: int = 4,
        patch_stride: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"htsat: depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        if spec_size % mel_bins or spec_size % patch_stride:
            raise ValueError(
                f"htsat: spec_size {spec_size} must be a multiple of mel_bins {mel_bins} and of patch_stride"
            )
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.window_size = window_size
        self.spec_size = spec_size
        self.freq_ratio = spec_size // mel_bins
        self.patch_stride = patch_stride
        num_stages = len(depths)
        self.embed_dim = patch_embed_dim * 2 ** (num_stages - 1)
        grid = spec_size // patch_stride
        final = grid // 2 ** (num_stages - 1)
        if final * 2 ** (num_stages - 1) != grid or final % self.freq_ratio:
            raise ValueError(
                f"htsat: a {grid}x{grid} patch grid cannot halve {num_stages - 1} times to a size divisible by "
                f"freq_ratio {self.freq_ratio}; pick spec_size / patch_stride / depths accordingly"
            )

        self.spectrogram_extractor = PowerSpectrogram(window_size, hop_size)
        self.logmel_extractor = LogMel(mel_sample_rate or sample_rate, window_size, mel_bins, fmin, fmax)
        self.spec_augmenter = SpecAugment(64, 2, 8, 2) if spec_augment else nn.Identity()
        self.bn0 = nn.BatchNorm2d(mel_bins)
        self.patch_embed = PatchEmbed(patch_size, patch_stride, patch_embed_dim)
        n = sum(depths)  # stochastic depth grows linearly from 0 to drop_path_rate
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            res = grid // 2**i
            self.layers.append(BasicLayer(
                patch_embed_dim * 2**i, (res, res), depth, heads, attn_window_size, mlp_ratio,
                rates[sum(depths[:i]):sum(depths[: i + 1])], downsample=i < num_stages - 1,
            ))
        self.norm = nn.LayerNorm(self.embed_dim)
        # Token-semantic head: spans the remaining frequency tokens, 3 time tokens wide.
        self.tscam_conv = nn.Conv2d(
            self.embed_dim, num_classes, kernel_size=(final // self.freq_ratio, 3), padding=(0, 1)
        )
        self.head = nn.Linear(num_classes, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def target_frames(self) -> int:
        return self.freq_ratio * self.spec_size

    def logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (B, T) -> normalised (and, in training, augmented) log-mel (B, 1, frames, mel)."""
        x = self.logmel_extractor(self.spectrogram_extractor(waveform)).to(waveform.dtype)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        return self.spec_augmenter(x)

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, 1, frames <= target, mel) -> image (B, 1, spec_size, spec_size).

        Frames are stretched to ``freq_ratio * spec_size`` by bicubic interpolation
        (align_corners) and cut into ``freq_ratio`` segments stacked along frequency.
        """
        b, c, t, f = x.shape
        target_t, target_f = self.target_frames, self.spec_size // self.freq_ratio
        if t > target_t or f > target_f:
            raise ValueError(f"htsat: {t} frames x {f} mel bins exceed the {target_t} x {target_f} canvas")
        if t < target_t:
            x = F.interpolate(x, (target_t, f), mode="bicubic", align_corners=True)
        if f < target_f:
            x = F.interpolate(x, (target_t, target_f), mode="bicubic", align_corners=True)
        x = x.transpose(2, 3).reshape(b, c, target_f, self.freq_ratio, target_t // self.freq_ratio)
        return x.permute(0, 1, 3, 2, 4).reshape(b, c, self.freq_ratio * target_f, target_t // self.freq_ratio)

    def _tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Image -> final token map regrouped as (B, C, freq tokens / freq_ratio, time tokens)."""
        x = self.patch_embed(image)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        b, _, c = x.shape
        side = image.shape[2] // 2 ** (len(self.layers) - 1) // self.patch_stride
        x = x.transpose(1, 2).reshape(b, c, side, side)
        # Undo the fold: the freq_ratio stacked segments go back along time.
        x = x.reshape(b, c, self.freq_ratio, side // self.freq_ratio, side).permute(0, 1, 3, 2, 4)
        return x.reshape(b, c, side // self.freq_ratio, self.freq_ratio * side)

    def _heads(self, tokens: torch.Tensor, with_heads: bool) -> dict[str, torch.Tensor]:
        out = {"embedding": tokens.flatten(2).mean(-1)}
        if with_heads:
            logits = self.tscam_conv(tokens).flatten(2)  # (B, classes, time tokens)
            ratio = self.target_frames // logits.shape[-1]
            out["framewise_output"] = torch.sigmoid(logits).transpose(1, 2).repeat_interleave(ratio, dim=1)
            out["clipwise_output"] = torch.sigmoid(logits.mean(-1))
        return out

    def _run(self, waveform: torch.Tensor, with_heads: bool) -> dict[str, torch.Tensor]:
        x = self.logmel(waveform)
        t = x.shape[2]
        if t <= self.target_frames:
            return self._heads(self._tokens(self.fold(x)), with_heads)
        if self.training:  # a random crop of the canvas length per example, as the reference
            starts = torch.randint(0, t - self.target_frames, (x.shape[0],), device=x.device)
            idx = starts[:, None] + torch.arange(self.target_frames, device=x.device)
            x = torch.gather(x, 2, idx[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))
            return self._heads(self._tokens(self.fold(x)), with_heads)
        # Evaluation: mean over overlapping crops, as the Pengi reference does.
        crop = round(LONG_CLIP_CROP_FRACTION * self.target_frames)
        outs = [
            self._heads(self._tokens(self.fold(x[:, :, s:s + crop])), with_heads)
            for s in range(0, t - crop - 1, crop // 2)
        ]
        return {k: torch.stack([o[k] for o in outs]).mean(0) for k in outs[0]}

    def forward_dict(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(waveform, with_heads=True)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # The token-semantic head does not feed the embedding, so it is skipped here.
        return self._run(waveform, with_heads=False)["embedding"]


def htsat(
    variant: str = "tiny",
    sample_rate: int = 32000,
    clip_seconds: float | None = 10.0,
    mel_sample_rate: int | None = None,
    window_size: int | None = None,
    hop_size: int | None = None,
    num_classes: int = 527,
    pretrained: str | None = None,
    *,
    mel_bins: int = 64,
    fmin: float = 50.0,
    fmax: float | None = None,
    spec_size: int = 256,
    patch_embed_dim: int | None = None,
    depths: Sequence[int] | None = None,
    num_heads: Sequence[int] | None = None,
    attn_window_size: int = 8,
    drop_path_rate: float = 0.1,
    spec_augment: bool = True,
) -> HTSAT:
    """Build HTS-AT ``tiny`` (768-d), ``base`` (1024-d) or ``large`` (2048-d).

    ``sample_rate`` is the rate the data pipeline must deliver; ``mel_sample_rate``
    (default: the same) is the rate the mel filters are computed for -- Pengi feeds
    44.1 kHz audio to filters built for 32 kHz. ``window_size``, ``hop_size`` and ``fmax``
    not given follow from ``mel_sample_rate`` (see
    :func:`~pengi_kit.components.frontend.frontend_settings`: 32 ms, 10 ms, at most 14 kHz;
    1024, 320, 14000 at 32 kHz, the published front-end), so setting the data's rate is
    enough; given ones win. LAION-CLAP's
    tower is ``htsat(sample_rate=48000)`` (window 1024, hop 480: 1001 frames for 10 s). The keyword
    overrides after ``pretrained`` shrink the model for tests. ``pretrained`` is a
    local checkpoint holding the reference state dict (``{"model": sd}``,
    ``{"state_dict": sd}`` or bare; a ``module.`` or ``sed_model.`` prefix is
    stripped), or a folder written by ``pengi-kit import`` (whose recorded build
    arguments must match these), loaded strictly.
    """
    if variant not in HTSAT_PRESETS:
        raise ValueError(f"htsat: unknown variant {variant!r}; choose one of {', '.join(HTSAT_PRESETS)}")
    sizes = {"patch_embed_dim": patch_embed_dim, "depths": depths, "num_heads": num_heads}
    sizes = {**HTSAT_PRESETS[variant], **{k: v for k, v in sizes.items() if v is not None}}
    window_size, hop_size, fmax = frontend_settings(mel_sample_rate or sample_rate, window_size, hop_size, fmax)
    # what the weights depend on; an imported folder records it, and must match (see load_reference_weights)
    build_args = dict(
        sample_rate=sample_rate, mel_sample_rate=mel_sample_rate or sample_rate, window_size=window_size,
        hop_size=hop_size, num_classes=num_classes, mel_bins=mel_bins, fmin=fmin, fmax=fmax, spec_size=spec_size,
        patch_embed_dim=sizes["patch_embed_dim"], depths=list(sizes["depths"]), num_heads=list(sizes["num_heads"]),
        attn_window_size=attn_window_size,
    )
    model = HTSAT(**build_args, clip_seconds=clip_seconds, drop_path_rate=drop_path_rate, spec_augment=spec_augment)
    if pretrained:  # None or "" means random initialisation
        load_reference_weights(model, pretrained, n_fft=window_size, strip_prefixes=("module.", "sed_model."),
                               component="htsat", build_args={"variant": variant, **build_args})
    return model


__all__ = ["HTSAT", "HTSAT_PRESETS", "htsat", "window_partition", "window_reverse"]
