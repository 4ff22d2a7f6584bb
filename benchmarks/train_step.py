"""Training-step speed and peak memory: plain eager fp32 against the engine's best settings.

The model has Pengi-base shape with random weights, built offline: HTSAT-tiny (7 s at
44.1 kHz, trainable), a CLIP ViT-B/16-sized text tower (12 layers, width 512, frozen;
the offline byte tokenizer's vocabulary), two 4-layer transformer mappers with k = 40
(trainable), GPT-2 base with GPT-2's 50257-token vocabulary (frozen; gradients flow
through it) -- the trainable/frozen split of ``recipes/pengi_base.toml``. Inputs are
random waveforms, 40 prompt tokens and 77 target tokens.

Both configurations run in this process, one after the other, on the same model
(reset to the same weights): an optimiser step as ``Trainer.train_step`` takes it
(forward, backward, gradient clipping, AdamW step).

- eager: fp32, ``torch.optim.AdamW`` (for-each implementation);
- best: bf16 autocast, fused AdamW on a GPU, and ``torch.compile`` with ``--compile``.

    python benchmarks/train_step.py [--device cpu|cuda] [--batch-size 2] [--steps 3]
                                    [--warmup 1] [--compile] [--threads N]

Prints samples/s and peak memory for each, and their ratios. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU; on the CPU it is the process's peak
resident memory above the level before the configuration ran (sampled with psutil when
it is installed, else ``ru_maxrss``, a high-water mark of the whole process: a
configuration needing less than an earlier one then shows ~0).
"""
from __future__ import annotations

import argparse
import copy
import resource
import threading
import time

import torch

RATE, SECONDS, PROMPT_LEN, TARGET_LEN = 44100, 7.0, 40, 77


def build_model(device: str, lm_layers: int = 12, text_layers: int = 12) -> torch.nn.Module:
    """Pengi-base shape; fewer LM / text-tower layers only for ``benchmarks/gpu.sh --smoke``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pengi_kit.components.hf_causal_lm import HFCausalLM
    from pengi_kit.model import build_model as build
    from pengi_kit.recipe import load_recipe

    recipe = load_recipe("pengi_base", [
        'model.text_encoder.pretrained=""', "model.text_encoder.hidden_size=512", f"model.text_encoder.num_layers={text_layers}",
        "model.text_encoder.num_heads=8", "model.text_encoder.projection_dim=512",
        "model.text_encoder.max_positions=77",
        'model.lm.pretrained=""', "model.lm.n_layer=1"])  # this LM is replaced below by GPT-2 base
    torch.manual_seed(0)
    model = build(recipe)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_layer=lm_layers, bos_token_id=0, eos_token_id=0))  # GPT-2 base sizes
    lm.requires_grad_(False)
    model.lm = HFCausalLM(lm, model.lm.tokenizer)
    return model.to(device).train()


def batch(size: int, model: torch.nn.Module, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    prompt_vocab = model.text_encoder.model.config.vocab_size
    return {"audio": (torch.randn(size, int(RATE * SECONDS), generator=g) * 0.1).to(device),
            "prompt_ids": torch.randint(3, prompt_vocab, (size, PROMPT_LEN), generator=g).to(device),
            "prompt_mask": torch.ones(size, PROMPT_LEN, dtype=torch.long, device=device),
            "target_ids": torch.randint(1, 50257, (size, TARGET_LEN), generator=g).to(device),
            "target_mask": torch.ones(size, TARGET_LEN, dtype=torch.long, device=device)}


class PeakMemory:
    """Peak memory (MiB) of what runs inside the ``with`` block."""

    def __init__(self, device: str) -> None:
        self.device, self.peak = device, 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is not None:
            proc, self.base, self._stop = psutil.Process(), psutil.Process().memory_info().rss, False
            self._max = self.base

            def sample() -> None:
                while not self._stop:
                    self._max = max(self._max, proc.memory_info().rss)
                    time.sleep(0.005)
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        else:
            self._thread, self.base = None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self._thread is not None:
            self._stop = True
            self._thread.join()
            self.peak = (self._max - self.base) / 2**20
        else:
            self.peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base) / 2**20


def run(model, inputs, device: str, *, best: bool, compile_: bool, steps: int, warmup: int,
        bf16: bool | None = None) -> tuple[float, float]:
    """(samples/s, peak MiB); ``bf16`` (default: ``best``) turns autocast on separately, since CPUs
    without bf16 units run it many times slower than fp32."""
    from pengi_kit.engine.optim import build_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    optim = {"name": "adamw", "lr": 1e-5, "betas": [0.9, 0.999], "weight_decay": 0.0}
    fused = best and device.startswith("cuda")
    module = torch.compile(model) if best and compile_ else model
    autocast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if (best if bf16 is None else bf16)
                else torch.autocast(torch.device(device).type, enabled=False))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with PeakMemory(device) as memory:
        optimizer = build_optimizer(params, optim, fused=fused)

        def step() -> None:
            with autocast:
                out = module(**inputs)
            (out["loss_sum"] / out["tokens"]).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(warmup):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        elapsed = time.perf_counter() - start
        del optimizer
    return steps * inputs["audio"].shape[0] / elapsed, memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the 'best' configuration")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # eager fp32 means fp32
    model = build_model(args.device)
    initial = copy.deepcopy(model.state_dict())
    inputs = batch(args.batch_size, model, args.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"device {args.device}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up; "
          f"{total / 1e6:.1f} M parameters, {trainable / 1e6:.1f} M trainable")
    results = {}
    for name, best in (("eager fp32", False), ("best", True)):
        model.load_state_dict(initial)
        results[name] = run(model, inputs, args.device, best=best, compile_=args.compile,
                            steps=args.steps, warmup=args.warmup)
    label = "bf16 autocast" + (", fused AdamW" if args.device.startswith("cuda") else "") + \
        (", torch.compile" if args.compile else "")
    for name, (rate, peak) in results.items():
        print(f"{name:>11}: {rate:8.2f} samples/s, peak memory {peak:9.1f} MiB"
              + (f"  ({label})" if name == "best" else ""))
    (r0, m0), (r1, m1) = results["eager fp32"], results["best"]
    comparable = args.device.startswith("cuda") or _has_psutil()
    memory = f"{m1 / m0:.2f}x peak memory" if comparable and m0 > 0 else \
        "peak memory not comparable (ru_maxrss is a process high-water mark; install psutil)"
    print(f"      ratio: {r1 / r0:.2f}x samples/s, {memory} (best / eager)")


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
