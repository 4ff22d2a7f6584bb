"""FLOPs of a training step, counted rather than modelled (docs/training.md, "Speed and MFU").

:func:`step_flops` runs one forward and one backward pass of a model on given inputs under
``torch.utils.flop_counter.FlopCounterMode``, which counts every matmul, convolution and
attention product, forward and backward. The backward pass is autograd's own, so what it
counts is what training computes: no weight gradients for a frozen component, no input
gradients where nothing before a component trains (a frozen encoder), and for an LM with
LoRA adapters the input gradients through the whole LM but weight gradients for the
adapters only. Element-wise work (norms, activations, softmax) is left out, as usual for MFU.

The model is put in eval mode (no dropout: the same count every time), the RNG is left as it
was and no ``.grad`` is written, so measuring changes nothing about training.
"""
from __future__ import annotations

import torch

__all__ = ["step_flops", "fit_quadratic"]


def step_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Forward + backward FLOPs of ``model(**inputs)["loss_sum"]`` with respect to its trainable parameters."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        # the math kernel spells attention out in matmuls, which are counted on every device
        # (the counter knows no CPU flash kernel); the fused GPU kernels do the same FLOPs
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            loss = model(**inputs)["loss_sum"]
            if params and loss.requires_grad:
                torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def fit_quadratic(points: dict[int, float]) -> tuple[float, float, float]:
    """``(c0, c1, c2)`` of the parabola ``c0 + c1*x + c2*x**2`` through three ``{x: y}`` points
    (a transformer's cost in its sequence length: linear layers grow with it, attention with its square)."""
    (x0, y0), (x1, y1), (x2, y2) = sorted(points.items())
    c2 = ((y2 - y0) / (x2 - x0) - (y1 - y0) / (x1 - x0)) / (x2 - x1)
    c1 = (y1 - y0) / (x1 - x0) - c2 * (x0 + x1)
    return y0 - c1 * x0 - c2 * x0 * x0, c1, c2
