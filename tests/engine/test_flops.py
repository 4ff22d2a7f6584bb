"""Frozen-aware FLOP counting (pengi_kit.engine.flops) and the MFU fields of the training log."""
import json

import pytest
import torch

from pengi_kit.engine import flops
from pengi_kit.engine.trainer import Trainer
from pengi_kit.model import build_model
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe


def _counted(model, target_length):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**model.example_inputs(1, target_length))
    return counter.get_total_flops()


def test_measured_forward_flops_match_a_direct_count_at_any_length(tmp_path):
    model = build_model(from_dict(tiny_recipe(tmp_path)))
    counted = flops.measure(model)
    for length in (5, 12, 30):  # 12 and 30 lie off the two measured lengths: the LM's quadratic fit holds
        forward = sum(counted.per_example.values()) + counted.lm_linear * (counted.prefix_length + length) \
            + counted.lm_quadratic * (counted.prefix_length + length) ** 2
        assert forward == pytest.approx(_counted(model, length), rel=1e-9)
    assert counted.per_example["audio_encoder"] > 0 and counted.lm_quadratic > 0  # convs and attention counted


def test_backward_is_frozen_aware(tmp_path):
    trainable = flops.measure(build_model(from_dict(tiny_recipe(tmp_path))))
    raw = tiny_recipe(tmp_path)
    raw["model"]["lm"]["trainable"] = False
    raw["model"]["audio_encoder"]["trainable"] = False
    frozen = flops.measure(build_model(from_dict(raw)))
    assert frozen.backward_factor("lm") == 1.0  # activation gradients for the mappers before it
    assert frozen.backward_factor("audio_encoder") == 0.0  # nothing trainable before it: forward only
    assert trainable.backward_factor("lm") == trainable.backward_factor("audio_encoder") == 2.0
    assert frozen.backward_factor("audio_mapper") == 2.0  # mappers always train in the tiny recipe
    b, t = 8, 10
    lm = b * (frozen.lm_linear * (frozen.prefix_length + t) + frozen.lm_quadratic * (frozen.prefix_length + t) ** 2)
    assert trainable.step(b, t) - frozen.step(b, t) == pytest.approx(
        lm + 2 * b * frozen.per_example["audio_encoder"], rel=1e-9)


def test_peak_flops_table_and_override(monkeypatch):
    assert flops.peak_flops(torch.device("cpu"), "bf16", 500.0) is None  # never a made-up CPU figure
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert flops.peak_flops(cuda, "bf16") == pytest.approx(989e12)
    assert flops.peak_flops(cuda, "fp32") == pytest.approx(66.9e12)  # fp32 matmuls without TF32
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert flops.peak_flops(cuda, "fp32") == pytest.approx(494.7e12)
    assert flops.peak_flops(cuda, "bf16", 123.0) == pytest.approx(123e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert flops.peak_flops(cuda, "bf16") == pytest.approx(756e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert flops.peak_flops(cuda, "bf16") == pytest.approx(312e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A10G")
    assert flops.peak_flops(cuda, "bf16") is None


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_log_has_tokens_per_s_and_mfu_null_on_cpu(tmp_path):
    trainer = Trainer(from_dict(tiny_recipe(tmp_path / "run", train={"max_steps": 2, "log_every": 1})),
                      progress=False)
    assert trainer.peak_flops is None and trainer.step_flops is None and trainer._no_mfu == "n/a on CPU"
    trainer.fit()
    rows = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert len(rows) == 2 and all(r["mfu"] is None and r["tokens_per_s"] > r["samples_per_s"] > 0 for r in rows)


def test_mfu_is_model_flops_over_time_and_peak(tmp_path):
    trainer = Trainer(from_dict(tiny_recipe(tmp_path / "run", train={"max_steps": 2, "log_every": 2})),
                      progress=False)
    trainer.step_flops, trainer.peak_flops = flops.measure(trainer.model), 1e9  # as on a GPU of 1 GFLOP/s
    seen = []
    step = trainer.train_step

    def counting(batch):
        seen.append(trainer.step_flops.step(len(batch["prompts"]), trainer.model.tokenize_targets(
            batch["texts"])["input_ids"].shape[1]))
        return step(batch)

    trainer.train_step = counting
    trainer.fit()
    row = [r for r in _records(tmp_path / "run") if "loss" in r][0]
    seconds = 16 / row["samples_per_s"]  # one log window: 2 steps of 8 clips
    assert row["mfu"] == pytest.approx(sum(seen) / seconds / 1e9, rel=1e-3)
