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

``--lora``: the LM's share instead. A Pengi model whose LM is a Llama-type model of
SmolLM2-135M shape (random weights; an architecture-only folder with SmolLM2-135M's
config and a 49152-word stand-in tokenizer, so the recipe builds it offline through the
generic ``causal-lm`` component), with Pengi's sequence (40 + 40 prefix embeddings, 40
prompt tokens, 77 target tokens) and a negligible audio side (testing.tiny_recipe's
CNN14 of width 2 on 0.5 s clips, one-layer transformer mappers), trained
three ways: the LM frozen (canonical Pengi), LoRA on the LM (``[model.lm.lora]``, rank
``--rank``, the component's default target modules), and the whole LM fine-tuned. Each
runs in a fresh process (same seed, same batch), so memory an earlier one freed cannot be
reused unseen. Peak memory is what the steps add to the built model (so its weights are
not counted; gradients, optimiser state and activations are): on the CPU the kernel's
peak resident memory (Linux VmHWM, reset after building; ``ru_maxrss`` would not do: it
keeps the parent's peak across fork and exec) minus the resident memory after building,
on a GPU ``max_memory_allocated`` minus what was allocated after building. Prints trainable
parameters, samples/s and peak memory, and LoRA's ratios to full fine-tuning.

    python benchmarks/train_step.py --lora [--lm-layers N] [--batch-size 8] [--steps 10]
                                    [--rank 8] [--vocab 49152] [--device ...] [--threads N]

``--lm-layers`` defaults to SmolLM2-135M's 30 on a GPU and to 6 on the CPU (state it with
figures); a smaller ``--vocab`` is only for smoke runs.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def reset_high_water() -> bool:
    """Linux: set this process's peak resident memory (VmHWM) to its current one; False elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


class PeakMemory:
    """Peak memory (MiB) of what runs inside the ``with`` block.

    ``high_water`` (Linux): on the CPU, the kernel's exact peak resident memory (VmHWM, reset
    at entry) minus the resident memory at entry, instead of sampling; elsewhere as without it."""

    def __init__(self, device: str, high_water: bool = False) -> None:
        self.device, self.peak, self.high_water = device, 0.0, high_water

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.high_water = self.high_water and reset_high_water()
        if self.high_water:
            self._thread, self.base = None, status_bytes("VmRSS")
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
        elif self.high_water:
            self.peak = (status_bytes("VmHWM") - self.base) / 2**20
        elif self._thread is not None:
            self._stop = True
            self._thread.join()
            self.peak = (self._max - self.base) / 2**20
        else:
            self.peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base) / 2**20


def run(model, inputs, device: str, *, best: bool, compile_: bool, steps: int, warmup: int,
        bf16: bool | None = None, high_water: bool = False) -> tuple[float, float]:
    """(samples/s, peak MiB); ``bf16`` (default: ``best``) turns autocast on separately, since CPUs
    without bf16 units run it many times slower than fp32; ``high_water``: see :class:`PeakMemory`."""
    from pengi_kit.engine.optim import build_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    optim = {"name": "adamw", "lr": 1e-5, "betas": [0.9, 0.999], "weight_decay": 0.0}
    fused = best and device.startswith("cuda")
    module = torch.compile(model) if best and compile_ else model
    autocast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if (best if bf16 is None else bf16)
                else torch.autocast(torch.device(device).type, enabled=False))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with PeakMemory(device, high_water) as memory:
        optimizer = build_optimizer(model, optim, fused=fused)

        def step() -> None:
            with autocast:
                out = module(**inputs)
            (out["loss_sum"] / model.loss_units(inputs)).backward()
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


# ---------------------------------------------------------------------------------- --lora
LM_CONFIGS = {"frozen": "LM frozen (Pengi)", "lora": "LoRA on the LM", "full": "LM fully fine-tuned"}


def smollm2_folder(folder: Path, layers: int, vocab: int) -> str:
    """An architecture-only folder (pengi_kit.sources) with SmolLM2-135M's config (``layers``
    layers) and a word-level stand-in tokenizer of ``vocab`` tokens: the recipe builds a
    randomly initialised model of exactly that shape, offline."""
    from generation import smollm2_config  # benchmarks/ is on sys.path: this script's folder

    from pengi_kit.sources import mark_architecture_only

    config, tokenizer = smollm2_config(layers, vocab)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    mark_architecture_only(folder, "SmolLM2-135M shape, random weights (benchmarks/train_step.py --lora)")
    return str(folder)


def lora_recipe(config: str, folder: str, rank: int, out_dir: str) -> dict:
    """A Pengi recipe with Pengi's sequence lengths, a negligible audio side and the LM of
    ``folder``: frozen, with LoRA of ``rank``, or fully trained (``config``)."""
    from pengi_kit.testing import tiny_recipe

    lm = {"name": "causal-lm", "pretrained": folder, "trainable": config == "full"}
    if config == "lora":
        lm["lora"] = {"rank": rank, "alpha": 2 * rank}
    mapper = {"name": "transformer", "prefix_length": 40, "num_layers": 1, "num_heads": 8}
    return tiny_recipe(out_dir, lm=lm, prompt_length=40, target_length=77, audio_mapper=mapper, text_mapper=mapper)


def lora_worker(args: argparse.Namespace) -> None:
    """One configuration in this (fresh) process; prints one JSON line."""
    from pengi_kit.model import build_model as build
    from pengi_kit.recipe import from_dict

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = from_dict(lora_recipe(args.lora_worker, smollm2_folder(Path(tmp) / "lm", args.lm_layers, args.vocab),
                                       args.rank, tmp))
        model = build(recipe).to(args.device).train()
    g = torch.Generator().manual_seed(1)

    def words(n: int) -> str:  # n tokens of the stand-in vocabulary
        return " ".join(f"w{i}" for i in torch.randint(0, args.vocab - 5, (n,), generator=g).tolist())

    b = args.batch_size
    inputs = model.batch_inputs({"audio": torch.randn(b, int(model.sample_rate * model.clip_seconds), generator=g) * 0.1,
                                 "prompts": [words(40) for _ in range(b)], "texts": [words(76) for _ in range(b)]})
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    trainable = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    rate, peak = run(model, inputs, args.device, best=False, compile_=False, steps=args.steps, warmup=args.warmup,
                     high_water=True)
    print(json.dumps({"config": args.lora_worker, "rate": rate, "peak_mib": peak,
                      "trainable": sum(n for _, n in trainable),
                      "trainable_lm": sum(n for name, n in trainable if name.startswith("lm.")),
                      "lm_params": sum(p.numel() for p in model.lm.parameters()),
                      "target_tokens": int(inputs["target_mask"].sum()), "prefix": model.prefix_length}))


def lora_runs(device: str, batch_size: int, steps: int, warmup: int, lm_layers: int, vocab: int = 49152,
              rank: int = 8) -> dict[str, dict]:
    """Each of :data:`LM_CONFIGS` in a fresh process (:func:`lora_worker`): its JSON row."""
    passed = ["--device", device, "--batch-size", str(batch_size), "--steps", str(steps), "--warmup", str(warmup),
              "--threads", str(torch.get_num_threads()), "--rank", str(rank), "--lm-layers", str(lm_layers),
              "--vocab", str(vocab)]
    rows = {}
    for config in LM_CONFIGS:
        done = subprocess.run([sys.executable, __file__, "--lora-worker", config, *passed], capture_output=True,
                              text=True)
        if done.returncode:
            raise RuntimeError(f"train_step.py --lora-worker {config} failed:\n{done.stderr[-3000:]}")
        rows[config] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def lora_main(args: argparse.Namespace) -> None:
    """``--lora``: prints the three configurations and LoRA's ratios to full fine-tuning."""
    rows = lora_runs(args.device, args.batch_size, args.steps, args.warmup, args.lm_layers, args.vocab, args.rank)
    first = rows["full"]
    print(f"device {args.device}, {torch.get_num_threads()} thread(s); Pengi step with a Llama LM of SmolLM2-135M "
          f"shape, {args.lm_layers} layers, vocabulary {args.vocab} ({first['lm_params'] / 1e6:.1f} M parameters), "
          f"random weights; LoRA rank {args.rank}; batch {args.batch_size}, prefix {first['prefix']} + {first['target_tokens'] // args.batch_size} "
          f"target tokens; {args.steps} timed steps after {args.warmup} warm-up; AdamW, fp32; each configuration in a "
          "fresh process")
    memory = "max_memory_allocated" if args.device.startswith("cuda") else "VmHWM - VmRSS after build"
    print(f"{'':>19} | {'trainable parameters':>20} | {'of them in the LM':>17} | samples/s | peak MiB ({memory})")
    for config, row in rows.items():
        print(f"{LM_CONFIGS[config]:>19} | {row['trainable']:>20,} | {row['trainable_lm']:>17,} | {row['rate']:9.2f} | "
              f"{row['peak_mib']:.0f}")
    lora, full = rows["lora"], rows["full"]
    print(f"LoRA / full fine-tuning: {lora['trainable_lm'] / full['trainable_lm']:.4f}x trainable LM parameters, "
          f"{lora['rate'] / full['rate']:.2f}x samples/s, {lora['peak_mib'] / full['peak_mib']:.2f}x peak memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the 'best' configuration")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--lora", action="store_true", help="the LM frozen / with LoRA / fully fine-tuned instead")
    parser.add_argument("--lm-layers", type=int, default=0, help="--lora: LM layers (default: 30, SmolLM2-135M's, "
                        "on a GPU; 6 on the CPU)")
    parser.add_argument("--vocab", type=int, default=49152, help="--lora: vocabulary size (SmolLM2: 49152)")
    parser.add_argument("--rank", type=int, default=8, help="--lora: LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--lora-worker", choices=list(LM_CONFIGS), help=argparse.SUPPRESS)  # one configuration, internal
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.lm_layers = args.lm_layers or (30 if args.device.startswith("cuda") else 6)
    if args.lora_worker or args.lora:
        lora_worker(args) if args.lora_worker else lora_main(args)
        return
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
