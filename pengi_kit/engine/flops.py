"""Model FLOPs per training step, frozen-aware, and the peak FLOP/s of known GPUs (for MFU).

How a step is counted (docs/training.md, "Speed and MFU"):

* Forward FLOPs are *measured*, not modelled: :func:`measure` runs the model once on one
  example under ``torch.utils.flop_counter.FlopCounterMode``, which counts every matmul,
  convolution and attention (HTSAT's windows, CNN14's convs, the LM's attention scores)
  per component slot. The LM is measured at two target lengths and fitted exactly by
  ``a*T + b*T**2`` (T = prefix + target length: linear layers grow with T, attention
  scores with T**2). Element-wise work (norms, activations, softmax) is left out, as is
  usual for MFU.
* The LM is counted on the padded batch it computes (prefix + the batch's longest target);
  the encoders, projections and mappers once per example (one clip, one prompt).
* Backward: a trainable component costs 2x its forward (activation and weight gradients);
  a frozen one that something trainable sits before (the LM after the always-trainable
  projections and mappers) costs 1x (activation gradients only); a frozen one with nothing
  trainable before it (a frozen encoder) costs nothing. The first layer of a trainable
  encoder needs no input gradient either; that small excess is left in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# what feeds each slot (the LM's token embeddings feed the sequence text mapper when there
# is no text encoder); a component needs activation gradients when one of these trains
UPSTREAM = {
    "audio_encoder": (), "text_encoder": (),
    "audio_projection": ("audio_encoder",), "text_projection": ("text_encoder",),
    "audio_mapper": ("audio_encoder", "audio_projection"),
    "text_mapper": ("text_encoder", "text_projection", "lm"),
    "lm": ("audio_encoder", "audio_projection", "audio_mapper", "text_encoder", "text_projection", "text_mapper"),
}


@dataclass(frozen=True)
class StepFlops:
    """Forward FLOPs per example of each non-LM slot, the LM's ``a*T + b*T**2`` per example,
    the LM prefix length, and which slots train."""
    per_example: dict[str, float]
    lm_linear: float
    lm_quadratic: float
    prefix_length: int
    trainable: dict[str, bool]

    def backward_factor(self, slot: str) -> float:
        if self.trainable.get(slot):
            return 2.0
        return 1.0 if any(self.trainable.get(up) for up in UPSTREAM.get(slot, ())) else 0.0

    def step(self, batch_size: int, target_length: int) -> float:
        """FLOPs of one optimiser step (forward + backward) over ``batch_size`` examples whose
        padded target length is ``target_length``."""
        t = self.prefix_length + target_length
        lm = batch_size * (self.lm_linear * t + self.lm_quadratic * t * t)
        total = lm * (1 + self.backward_factor("lm"))
        for slot, flops in self.per_example.items():
            total += batch_size * flops * (1 + self.backward_factor(slot))
        return total


def _slot_flops(model: torch.nn.Module, target_length: int) -> dict[str, float]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # the math kernel spells attention out in matmuls, which are counted on every device
    # (the counter knows no CPU flash kernel); the fused GPU kernels do the same FLOPs
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**model.example_inputs(1, target_length))
    root = type(model).__name__
    out: dict[str, float] = {}
    for name, counts in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == root:
            out[parts[1]] = float(sum(counts.values()))
    return out


def measure(model: torch.nn.Module, lengths: tuple[int, int] = (8, 16)) -> StepFlops:
    """Count a PengiModel's forward FLOPs on one example (eval mode, no gradients, RNG
    untouched, so that training is unchanged) and note which slots train."""
    was_training = model.training
    model.eval()
    devices = [d for d in [next(model.parameters()).device] if d.type == "cuda"]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            one, two = (_slot_flops(model, n) for n in lengths)
    finally:
        model.train(was_training)
    k = model.prefix_length
    t1, t2 = k + lengths[0], k + lengths[1]
    f1, f2 = one.pop("lm", 0.0), two.pop("lm", 0.0)
    quadratic = (f2 / t2 - f1 / t1) / (t2 - t1)  # f(T)/T = a + b*T: a line through two points
    trainable = {name: any(p.requires_grad for p in child.parameters()) for name, child in model.named_children()}
    return StepFlops(one, f1 / t1 - quadratic * t1, quadratic, k, trainable)


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
