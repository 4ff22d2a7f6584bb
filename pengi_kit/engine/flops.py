"""The peak FLOP/s of known GPUs, for MFU (docs/training.md, "Speed and MFU").

The other half of MFU, the model's FLOPs per training step, is the model's own to count
(``Trainable.flops``, :mod:`pengi_kit.models.flops`): the engine knows no model's wiring.
"""
from __future__ import annotations

import re

import torch

# Dense (no sparsity) peak tensor throughput in TFLOP/s from NVIDIA's data sheets:
# (bf16/fp16, tf32, fp32 without tensor cores). PyTorch's bf16 matmuls accumulate in fp32,
# which is the RTX 4090's 165 (not 330) figure.
PEAK_TFLOPS: list[tuple[str, tuple[float, float, float]]] = [
    (r"H200", (989.0, 494.7, 66.9)),
    (r"H100.*PCIe", (756.0, 378.0, 51.2)),
    (r"H100", (989.0, 494.7, 66.9)),  # SXM
    (r"A100", (312.0, 156.0, 19.5)),
    (r"L40S", (362.05, 183.0, 91.6)),
    (r"A10$", (125.0, 62.5, 31.2)),
    (r"RTX 4090", (165.2, 82.6, 82.6)),
]


def peak_flops(device: torch.device, precision: str, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s for MFU: ``override_tflops`` (train.peak_flops) when set; else the table's
    figure for this GPU and precision; None on a CPU (no figure there is worth quoting) or
    on a GPU the table lacks (an A10G, say: set train.peak_flops)."""
    if device.type != "cuda":
        return None
    if override_tflops > 0:
        return override_tflops * 1e12
    name = torch.cuda.get_device_name(device)
    for pattern, (half, tf32, fp32) in PEAK_TFLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            if precision in ("bf16", "fp16"):
                return half * 1e12
            return (tf32 if torch.get_float32_matmul_precision() != "highest" else fp32) * 1e12
    return None
