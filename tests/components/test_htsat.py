"""HTS-AT: shapes, the fold into an image, contract, gradients, reference-layout
loading, the Pengi and LAION-CLAP front-end settings, and the published size."""
from __future__ import annotations

import pytest
import torch

from pengi_kit.components.frontend import slaney_mel_filters, torchlibrosa_ignored_keys
from pengi_kit.components.htsat import HTSAT, htsat
from pengi_kit.contracts import AudioEncoder
from pengi_kit.errors import WeightsError

SR = 16000
# A small HTS-AT: 64x64 canvas (16 mel bins x 256 frames folded 4 times), patch
# grid 16 -> 8 over two stages, 8x8 windows: stage 0 has four windows and shifts
# them in its second block; stage 1 is a single window and never shifts, like the last
# stage of the full model.
TINY = dict(
    sample_rate=SR, window_size=512, hop_size=160, fmax=8000, mel_bins=16, spec_size=64,
    patch_embed_dim=8, depths=(2, 2), num_heads=(1, 2), attn_window_size=8, num_classes=10,
)


def tiny(**overrides) -> HTSAT:
    torch.manual_seed(0)
    return htsat("tiny", **{**TINY, **overrides})


def audio(batch: int = 3, seconds: float = 1.0, seed: int = 0, sr: int = SR) -> torch.Tensor:
    return torch.rand(batch, int(sr * seconds), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def reference_layout(model: HTSAT, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    n = model.window_size
    for key in torchlibrosa_ignored_keys(prefix):
        sd[key] = torch.zeros(n // 2 + 1, 1, n)
    return sd


def test_shapes_and_outputs() -> None:
    model = tiny().eval()
    with torch.no_grad():
        out = model.forward_dict(audio())
        emb = model(audio())
    assert model.embed_dim == 16  # 8 * 2 ** (stages - 1)
    assert emb.shape == out["embedding"].shape == (3, 16)
    torch.testing.assert_close(emb, out["embedding"])
    assert out["clipwise_output"].shape == (3, 10)
    assert out["framewise_output"].shape == (3, 256, 10)  # one row per canvas frame
    for key in ("clipwise_output", "framewise_output"):
        assert ((out[key] > 0) & (out[key] < 1)).all()


def test_fold_stacks_time_segments_along_frequency() -> None:
    model = tiny()
    frames, mels, ratio = 256, 16, 4  # canvas 64 x 64: four 64-frame segments
    x = torch.randn(2, 1, frames, mels)
    image = model.fold(x)
    assert image.shape == (2, 1, 64, 64)
    for k in range(ratio):  # segment k: frames [64k, 64k+64) as rows [16k, 16k+16)
        assert torch.equal(image[:, :, k * mels:(k + 1) * mels, :], x[:, :, k * 64:(k + 1) * 64, :].transpose(2, 3))


def test_fold_interpolates_short_input_to_canvas() -> None:
    model = tiny()
    x = torch.randn(2, 1, 101, 16)  # 1 s at hop 160
    image = model.fold(x)
    assert image.shape == (2, 1, 64, 64)
    # align_corners: the first and last frames survive the stretch unchanged
    torch.testing.assert_close(image[:, :, :16, 0], x[:, :, 0, :])
    torch.testing.assert_close(image[:, :, 48:, -1], x[:, :, -1, :])
    with pytest.raises(ValueError, match="exceed"):
        model.fold(torch.randn(1, 1, 300, 16))


def test_full_size_fold_is_256_by_256() -> None:
    with torch.device("meta"):
        model = htsat("tiny")
    assert model.target_frames == 1024
    for frames in (965, 1001, 1024):  # Pengi 7 s at 44.1 kHz, 10 s at 32 kHz / LAION 48 kHz
        assert model.fold(torch.randn(1, 1, frames, 64)).shape == (1, 1, 256, 256)


def test_declared_contract() -> None:
    model = tiny(clip_seconds=7.0)
    assert isinstance(model, AudioEncoder)
    assert (model.sample_rate, model.clip_seconds, model.embed_dim) == (SR, 7.0, 16)
    with torch.device("meta"):
        assert htsat("tiny").embed_dim == 768
        assert htsat("base").embed_dim == 1024
        assert htsat("large").embed_dim == 2048


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="tiny, base, large"):
        htsat("huge")


def test_gradient_reaches_input_side() -> None:
    model = tiny().train()
    wave = audio().requires_grad_(True)
    model(wave).pow(2).mean().backward()
    for name in ("patch_embed.proj.weight", "bn0.weight", "layers.0.blocks.1.attn.relative_position_bias_table"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert wave.grad is not None and wave.grad.abs().sum() > 0


def test_eval_is_deterministic_and_per_example() -> None:
    model = tiny().eval()
    x = audio()
    with torch.no_grad():
        a, b, single = model.forward_dict(x), model.forward_dict(x), model.forward_dict(x[1:2])
    for key in a:
        assert torch.equal(a[key], b[key])
        torch.testing.assert_close(a[key][1:2], single[key], atol=1e-5, rtol=1e-5)


def test_state_dict_keys_follow_the_reference() -> None:
    keys = set(tiny().state_dict())
    for key in (
        "logmel_extractor.melW", "bn0.running_mean", "patch_embed.proj.weight", "patch_embed.norm.bias",
        "layers.0.blocks.0.norm1.weight", "layers.0.blocks.0.attn.qkv.weight", "layers.0.blocks.0.attn.proj.bias",
        "layers.0.blocks.0.attn.relative_position_bias_table", "layers.0.blocks.0.attn.relative_position_index",
        "layers.0.blocks.0.norm2.weight", "layers.0.blocks.0.mlp.fc1.weight", "layers.0.blocks.0.mlp.fc2.bias",
        "layers.0.downsample.reduction.weight", "layers.0.downsample.norm.weight",
        "norm.weight", "tscam_conv.weight", "tscam_conv.bias", "head.weight", "head.bias",
    ):
        assert key in keys, key
    # Shifted windows carry a mask; a stage no wider than a window does not shift.
    assert "layers.0.blocks.1.attn_mask" in keys
    assert "layers.0.blocks.0.attn_mask" not in keys and "layers.1.blocks.1.attn_mask" not in keys
    assert "layers.0.downsample.reduction.bias" not in keys and "layers.1.downsample.reduction.weight" not in keys
    assert not any(k.startswith("spectrogram_extractor.") for k in keys)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_pretrained_reference_layout_loads_strictly(tmp_path, prefix: str) -> None:
    source = tiny().eval()
    with torch.no_grad():
        source.bn0.running_var.uniform_(0.5, 2.0)
        source.bn0.running_mean.normal_()
    sd = reference_layout(source, prefix)
    path = tmp_path / "htsat_audioset.pth"
    torch.save({"model": sd}, path)
    loaded = tiny(pretrained=str(path)).eval()
    with torch.no_grad():
        expected, got = source.forward_dict(audio()), loaded.forward_dict(audio())
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_pretrained_mismatch_is_one_line(tmp_path) -> None:
    sd = reference_layout(tiny())
    del sd["layers.0.blocks.1.attn_mask"]
    path = tmp_path / "bad_htsat.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(WeightsError) as info:
        tiny(pretrained=str(path))
    assert "bad_htsat.pth" in str(info.value) and "layers.0.blocks.1.attn_mask" in str(info.value)
    assert "\n" not in str(info.value)


def test_long_clip_eval_averages_crops_and_training_crops() -> None:
    model = tiny().eval()
    x = audio(batch=2, seconds=3.0)  # 301 frames > 256-frame canvas
    with torch.no_grad():
        emb = model(x)
        mel = model.logmel(x)
        crop = round(689 / 1024 * 256)  # the Pengi reference's 689-of-1024 crop, hop crop // 2
        manual = torch.stack([
            model._tokens(model.fold(mel[:, :, s:s + crop])).flatten(2).mean(-1)
            for s in range(0, mel.shape[2] - crop - 1, crop // 2)
        ]).mean(0)
    torch.testing.assert_close(emb, manual)
    assert model.train()(x).shape == (2, 16)


def test_pengi_input_contract_with_32k_mel_filters() -> None:
    # Pengi: 7 s at 44.1 kHz into filters built for 32 kHz -> 965 frames.
    model = tiny(sample_rate=44100, clip_seconds=7.0, mel_sample_rate=32000, window_size=1024, hop_size=320,
                 fmax=14000, mel_bins=64, spec_size=256, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                 attn_window_size=8).eval()
    expected = torch.from_numpy(slaney_mel_filters(32000, 1024, 64, 50, 14000))
    assert torch.equal(model.logmel_extractor.melW, expected)
    assert model.sample_rate == 44100
    x = audio(batch=1, seconds=7.0, sr=44100)
    with torch.no_grad():
        assert model.logmel(x).shape == (1, 1, 965, 64)
        assert model(x).shape == (1, 64)


def test_laion_clap_settings() -> None:
    # LAION-CLAP HTSAT: 48 kHz, hop 480 -> 1001 frames for 10 s, stretched to 1024.
    model = tiny(sample_rate=48000, clip_seconds=10.0, window_size=1024, hop_size=480, fmax=14000, mel_bins=64,
                 spec_size=256, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), attn_window_size=8).eval()
    x = audio(batch=1, seconds=10.0, sr=48000)
    with torch.no_grad():
        mel = model.logmel(x)
        assert mel.shape == (1, 1, 1001, 64)
        assert model.fold(mel).shape == (1, 1, 256, 256)
        out = model.forward_dict(x)
    assert out["embedding"].shape == (1, 64) and out["framewise_output"].shape == (1, 1024, 10)


def test_published_sizes() -> None:
    with torch.device("meta"):  # counts parameters without allocating them
        counts = {v: sum(p.numel() for p in htsat(v).parameters()) for v in ("tiny", "base", "large")}
    # HTS-AT paper: "31M" parameters, "35% of AST" (87M -> ~30.5M); tscam_conv and the
    # (unused) head are included, as in the reference state dict.
    assert counts["tiny"] == pytest.approx(30_241_687, rel=1e-6)
    assert counts["tiny"] == pytest.approx(31e6, rel=0.03)
    assert counts["base"] == pytest.approx(71_341_079, rel=1e-6)
    assert counts["large"] == pytest.approx(277_606_551, rel=1e-6)


@pytest.mark.slow
def test_full_size_tiny_on_ten_seconds() -> None:
    model = htsat("tiny").eval()
    with torch.no_grad():
        out = model.forward_dict(audio(batch=1, seconds=10.0, sr=32000))
    assert out["embedding"].shape == (1, 768)
    assert out["clipwise_output"].shape == (1, 527) and out["framewise_output"].shape == (1, 1024, 527)
