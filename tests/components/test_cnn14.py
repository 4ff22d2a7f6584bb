"""PANNs Cnn14: shapes, contract, gradients, reference-layout loading, size."""
from __future__ import annotations

import pytest
import torch

from pengi_kit.components.cnn14 import Cnn14, cnn14
from pengi_kit.components.frontend import torchlibrosa_ignored_keys
from pengi_kit.contracts import AudioEncoder
from pengi_kit.errors import WeightsError

SR = 16000


def tiny(**kwargs) -> Cnn14:
    torch.manual_seed(0)
    return cnn14(sample_rate=SR, width=8, num_classes=10, **kwargs)


def audio(batch: int = 3, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, int(SR * seconds), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def reference_layout(model: Cnn14, prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's weights as a PANNs checkpoint stores them: plus torchlibrosa's STFT kernels."""
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
    assert model.embed_dim == 256
    assert emb.shape == out["embedding"].shape == (3, 256)
    assert out["clipwise_output"].shape == (3, 10)
    assert ((out["clipwise_output"] > 0) & (out["clipwise_output"] < 1)).all()
    assert (emb >= 0).all()  # relu(fc1(.))


def test_declared_contract() -> None:
    model = cnn14(sample_rate=SR, width=8, clip_seconds=5.0)
    assert isinstance(model, AudioEncoder)
    assert (model.sample_rate, model.clip_seconds, model.embed_dim) == (SR, 5.0, 256)
    assert model.logmel_extractor.melW.shape == (257, 64)  # Cnn14_16k: window 512
    assert model.spectrogram_extractor.hop_length == 160
    with torch.device("meta"):
        m32 = cnn14(sample_rate=32000, width=8)
    assert m32.logmel_extractor.melW.shape == (513, 64) and m32.spectrogram_extractor.hop_length == 320


def test_absurd_sample_rate() -> None:
    with pytest.raises(ValueError, match="sample_rate 50 Hz is too low"):
        cnn14(sample_rate=50, width=8)


def test_gradient_reaches_input_side() -> None:
    model = tiny().train()
    wave = audio().requires_grad_(True)
    model(wave).pow(2).mean().backward()
    for name in ("conv_block1.conv1.weight", "bn0.weight", "fc1.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert wave.grad is not None and wave.grad.abs().sum() > 0
    assert model.logmel_extractor.melW.grad is None  # a buffer, never trained


def test_eval_is_deterministic_and_per_example() -> None:
    model = tiny().eval()
    x = audio()
    with torch.no_grad():
        a, b, single = model(x), model(x), model(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:2], single, atol=1e-5, rtol=1e-5)


def test_training_mode_is_stochastic() -> None:
    model = tiny().train()
    x = audio()
    assert not torch.equal(model(x), model(x))  # dropout and SpecAugment are on


@pytest.mark.parametrize("prefix", ["", "module."])
def test_pretrained_reference_layout_loads_strictly(tmp_path, prefix: str) -> None:
    source = tiny().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer would show
        for name, buf in source.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    sd = reference_layout(source, prefix)
    sd[prefix + "logmel_extractor.melW"] = sd[prefix + "logmel_extractor.melW"] * 1.5
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": sd}, path)
    loaded = cnn14(sample_rate=SR, width=8, num_classes=10, pretrained=str(path)).eval()
    assert torch.equal(loaded.logmel_extractor.melW, sd[prefix + "logmel_extractor.melW"])
    source.logmel_extractor.melW.mul_(1.5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio()), source(audio()), rtol=0, atol=0)


def test_pretrained_errors_name_file_and_keys(tmp_path) -> None:
    sd = reference_layout(tiny())
    del sd["conv_block3.bn2.running_mean"]
    sd["att_block.cla.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(WeightsError) as info:
        tiny(pretrained=str(path))
    message = str(info.value)
    assert "broken.pth" in message and "\n" not in message
    assert "conv_block3.bn2.running_mean" in message and "att_block.cla.weight" in message


def test_pretrained_width_mismatch(tmp_path) -> None:
    path = tmp_path / "wide.pth"
    torch.save({"model": reference_layout(cnn14(sample_rate=SR, width=4, num_classes=10))}, path)
    with pytest.raises(WeightsError, match="shape mismatch"):
        tiny(pretrained=str(path))


def test_published_size() -> None:
    with torch.device("meta"):  # counts 80M parameters without allocating them
        model = cnn14()
        model16 = cnn14(sample_rate=16000)
    count = sum(p.numel() for p in model.parameters())
    assert model.embed_dim == 2048
    assert count == 80_753_615  # PANNs Cnn14: "80.8M" (Kong et al. 2020, Table 3)
    assert count == pytest.approx(80.8e6, rel=1e-3)
    assert sum(p.numel() for p in model16.parameters()) == count


@pytest.mark.slow
def test_full_size_forward_on_ten_seconds() -> None:
    model = cnn14().eval()
    with torch.no_grad():
        out = model.forward_dict(torch.rand(1, 320000) * 2 - 1)
    assert out["embedding"].shape == (1, 2048) and out["clipwise_output"].shape == (1, 527)
