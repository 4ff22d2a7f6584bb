"""The GPUs' peak FLOP/s (pengi_kit.engine.flops) and the MFU and tokens/s fields of the training log
(the model's FLOPs: tests/models/test_flops_count.py)."""
import json

import pytest
import torch

from pengi_kit.engine import flops
from pengi_kit.engine.trainer import Trainer
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe


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
    assert trainer.peak_flops is None and trainer._no_mfu == "n/a on CPU"
    trainer.fit()
    rows = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert len(rows) == 2 and all(r["mfu"] is None and r["tokens_per_s"] > r["samples_per_s"] > 0 for r in rows)


def test_mfu_is_model_flops_over_time_and_peak(tmp_path):
    trainer = Trainer(from_dict(tiny_recipe(tmp_path / "run", train={"max_steps": 2, "log_every": 2})),
                      progress=False)
    trainer.peak_flops = 1e9  # as on a GPU of 1 GFLOP/s
    seen = []
    step = trainer.train_step

    def counting(batch):
        seen.append(trainer.model.flops(trainer.model.batch_inputs(batch)))
        return step(batch)

    trainer.train_step = counting
    trainer.fit()
    row = [r for r in _records(tmp_path / "run") if "loss" in r][0]
    seconds = 16 / row["samples_per_s"]  # one log window: 2 steps of 8 clips
    assert row["mfu"] == pytest.approx(sum(seen) / seconds / 1e9, rel=1e-3)
