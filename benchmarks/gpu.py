"""One table of the speeds users train and decode at: what ``benchmarks/gpu.sh`` runs.

On a model of Pengi-base shape with random weights (built offline by the functions of
``train_step.py`` and ``generation.py``, through the recipe machinery), in one process:

- train: samples/s, peak memory and model FLOP utilisation of an optimiser step, eager
  fp32 against bf16 autocast + fused AdamW, with and without ``torch.compile`` (compile
  is skipped on the CPU: its warm-up alone takes minutes there);
- decode: clips/s at batch 1 and 32 (``--smoke``: 1 and 4), beam 5, 30 new tokens: the
  uncached one-clip reference (``generation.reference_generate``), pengi-kit, and
  ``transformers``' own ``generate`` on the same prefix;
- data: clips/s the training loader delivers from 10 s FLAC files at 44.1 kHz (7 s
  crops, the recipe's workers) against the clips/s the best training step consumes;
- smollm2: a Llama-type LM of SmolLM2-135M shape (``generation.build_llama``), pengi-kit's
  decoding against ``transformers``' ``generate`` on the same random 80-embedding prefix,
  batch 1 and 8, beam 5 (``generation.py --lm smollm2-135m``);
- lm train: a Pengi step whose LM is that model, frozen / with LoRA / fully fine-tuned, each
  in a fresh process (``train_step.py --lora``): samples/s, peak memory, trainable parameters.

    python benchmarks/gpu.py [--smoke] [--device cuda|cpu] [--threads N] [--json PATH]

``--smoke`` shrinks everything (2-layer LM and text tower, few steps, tiny vocabulary) so
that the CPU runs it in seconds: its figures check that the script works, they are no
speed claims. The header names the device, versions, date and the command.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
import data as data_bench  # noqa: E402
import generation as gen_bench  # noqa: E402
import train_step as train_bench  # noqa: E402

SIZES = {  # smoke: seconds on the CPU; full: minutes on one H100 (compile warm-up included)
    "full": dict(lm_layers=12, text_layers=12, vocab=50257, train_batch=32, steps=8, warmup=2,
                 batches=(1, 32), ref_clips=4, new_tokens=30, clips=64, loader_batch=32,
                 llama_layers=30, llama_vocab=49152, llama_batches=(1, 8), lora_batch=8),
    "smoke": dict(lm_layers=2, text_layers=2, vocab=1000, train_batch=1, steps=1, warmup=0,
                  batches=(1, 4), ref_clips=1, new_tokens=10, clips=8, loader_batch=4,
                  llama_layers=1, llama_vocab=300, llama_batches=(1, 2), lora_batch=1),
}
BEAM = 5


# ---------------------------------------------------------------------------------- parts
def train_part(device: str, size: dict, compile_: bool, peak_tflops: float) -> tuple[list[dict], float]:
    """Samples/s, peak memory and MFU of each configuration; and the best samples/s.

    FLOPs are the trainer's (the model's ``flops``, pengi_kit.models.flops: forward and backward
    counted as autograd runs them, frozen- and LoRA-aware); MFU is against
    the peak of the configuration's precision (fp32 or bf16), as the trainer logs it."""
    from pengi_kit.engine.flops import peak_flops

    cuda = device.startswith("cuda")
    model = train_bench.build_model(device, size["lm_layers"], size["text_layers"])
    initial = copy.deepcopy(model.state_dict())
    inputs = train_bench.batch(size["train_batch"], model, device)
    b, t = inputs["target_ids"].shape
    per_sample = model.flops(inputs) / b if cuda else None  # MFU is n/a on the CPU: skip the count
    # bf16 autocast only on a GPU: CPUs without bf16 units run it tens of times slower than fp32
    best_name = "bf16 autocast + fused AdamW" if cuda else "fp32 (bf16/fused are GPU settings)"
    configs = [("eager fp32", False, False, "fp32"), (best_name, True, False, "bf16" if cuda else "fp32")]
    if compile_:
        configs.append((best_name + " + torch.compile", True, True, "bf16"))
    rows = []
    for name, best, comp, precision in configs:
        model.load_state_dict(initial)
        if comp:
            torch._dynamo.reset()
        try:
            rate, mem = train_bench.run(model, inputs, device, best=best, compile_=comp, bf16=cuda and best,
                                        steps=size["steps"], warmup=size["warmup"] + (2 if comp else 0))
        except Exception as err:  # a compile failure must not cost the rest of a one-shot GPU run
            if not comp:
                raise
            rows.append({"part": "train", "name": name, "rate": None, "unit": "samples/s",
                         "note": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"})
            continue
        peak = peak_flops(torch.device(device), precision, peak_tflops)
        rows.append({"part": "train", "name": name, "rate": rate, "unit": "samples/s", "memory_mib": mem,
                     "mfu": rate * per_sample / peak if peak and per_sample else None})
    if not compile_:
        rows.append({"part": "train", "name": "+ torch.compile", "rate": None, "unit": "samples/s",
                     "note": "skipped on the CPU (its warm-up takes minutes)"})
    for row in rows[1:]:
        if row["rate"] is not None:
            row["ratio"], row["vs"] = row["rate"] / rows[0]["rate"], "eager fp32"
    best = max(r["rate"] for r in rows if r["rate"] is not None)
    for row in rows:
        row.setdefault("note", "fastest" if row["rate"] == best else "")
    return rows, best


def _hf_generate(pengi, waves, batch: int, stop: int, new_tokens: int) -> list[str]:
    """transformers' own beam search on pengi-kit's prefix, batch by batch (prefix included in the time)."""
    model, tok, out = pengi.model, pengi.model.lm.tokenizer, []
    with torch.inference_mode():
        for i in range(0, len(waves), batch):
            chunk = waves[i:i + batch]
            ids = model.tokenize_prompts([gen_bench.PROMPT] * len(chunk))
            prefix = model.prefix(pengi._batch(chunk, None), ids["input_ids"].to(pengi.device),
                                  ids["attention_mask"].to(pengi.device))
            seqs = model.lm.model.generate(
                inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device),
                num_beams=BEAM, max_new_tokens=new_tokens, do_sample=False, length_penalty=1.0, early_stopping=False,
                eos_token_id=stop, pad_token_id=stop)
            for row in seqs.tolist():
                row = row[:row.index(stop)] if stop in row else row
                out.append(tok.decode(row, skip_special_tokens=True).strip())
    return out


def decode_part(device: str, size: dict) -> list[dict]:
    from pengi_kit.api import Pengi
    from pengi_kit.generation import stop_token_id

    pengi = Pengi(gen_bench.build_model(device, size["lm_layers"], size["vocab"]))
    rng = np.random.default_rng(0)
    n_max = max(size["batches"])
    waves = [(rng.uniform(-0.5, 0.5, int(gen_bench.RATE * gen_bench.SECONDS)).astype(np.float32), gen_bench.RATE)
             for _ in range(max(n_max, size["ref_clips"]))]
    n_tok = size["new_tokens"]
    pengi_mode = dict(method="beam", beam_size=BEAM, max_new_tokens=n_tok, compat="pengi")
    hf_mode = {**pengi_mode, "compat": "none", "length_penalty": 1.0}
    stop = stop_token_id(pengi.model.lm, pengi.decoding(**hf_mode))
    tok = pengi.model.lm.tokenizer
    # warm-up of every path (kernels, allocator) on two clips and two tokens
    gen_bench.reference_generate(pengi, waves[0], BEAM, 2)
    pengi.generate(waves[:2], gen_bench.PROMPT, batch_size=2, **{**pengi_mode, "max_new_tokens": 2})
    _hf_generate(pengi, waves[:2], 2, stop, 2)
    seconds, ref_tokens = gen_bench.timed(
        lambda: [gen_bench.reference_generate(pengi, w, BEAM, n_tok) for w in waves[:size["ref_clips"]]], device)
    ref_rate = size["ref_clips"] / seconds
    ref_texts = [tok.decode(t, skip_special_tokens=True).strip() for t in ref_tokens]
    rows = []
    for b in size["batches"]:
        clips = waves[:b]
        sec, texts = gen_bench.timed(lambda: pengi.generate(clips, gen_bench.PROMPT, batch_size=b, **pengi_mode), device)
        same = sum(a == r for a, r in zip(texts, ref_texts))
        rows.append({"part": f"decode b{b}", "name": "uncached reference, 1 clip at a time", "rate": ref_rate,
                     "unit": "clips/s", "note": f"{size['ref_clips']} clip(s) timed"})
        rows.append({"part": f"decode b{b}", "name": "pengi-kit, compat='pengi'", "rate": b / sec, "unit": "clips/s",
                     "ratio": b / sec / ref_rate, "vs": "reference",
                     "note": f"same tokens as the reference {same}/{len(ref_texts)}"})
        sec_hf, hf_texts = gen_bench.timed(lambda: _hf_generate(pengi, clips, b, stop, n_tok), device)
        sec, texts = gen_bench.timed(lambda: pengi.generate(clips, gen_bench.PROMPT, batch_size=b, **hf_mode), device)
        same = sum(a == h for a, h in zip(texts, hf_texts))
        rows.append({"part": f"decode b{b}", "name": "transformers generate (same prefix)", "rate": b / sec_hf,
                     "unit": "clips/s", "note": "num_beams=5, length_penalty=1, early_stopping=False"})
        rows.append({"part": f"decode b{b}", "name": "pengi-kit, compat='none'", "rate": b / sec, "unit": "clips/s",
                     "ratio": sec_hf / sec, "vs": "transformers",
                     "note": f"same tokens as transformers {same}/{b}"})
        if device.startswith("cuda") and hasattr(pengi.decoding(), "compile"):  # generate.compile (issue 16 item 4)
            try:
                pengi.generate(clips, gen_bench.PROMPT, batch_size=b, **hf_mode, compile=True)  # compiles
                sec, texts_c = gen_bench.timed(
                    lambda: pengi.generate(clips, gen_bench.PROMPT, batch_size=b, **hf_mode, compile=True), device)
                rows.append({"part": f"decode b{b}", "name": "pengi-kit, compat='none', compile=True",
                             "rate": b / sec, "unit": "clips/s", "ratio": sec_hf / sec, "vs": "transformers",
                             "note": f"same tokens as uncompiled {sum(a == c for a, c in zip(texts, texts_c))}/{b}"})
            except Exception as err:  # noqa: BLE001 -- reported in the table, the run goes on
                rows.append({"part": f"decode b{b}", "name": "pengi-kit, compat='none', compile=True", "rate": None,
                             "unit": "clips/s", "note": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"})
    return rows


def data_part(train_rate: float, size: dict, workers: int) -> list[dict]:
    from pengi_kit.data.build import build_dataset
    from pengi_kit.data.loader import TrainLoader
    from pengi_kit.recipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        manifest = data_bench.write_clips(Path(tmp), size["clips"], "flac")
        recipe = load_recipe("pengi_base", [f'data.train="{manifest}"', 'data.valid=""'])
        enc = recipe["model"]["audio_encoder"]
        dataset = build_dataset(recipe, "train", enc["sample_rate"], enc["clip_seconds"])
        recipe_workers = recipe["data"]["num_workers"]
        workers = min(recipe_workers, 8) if workers < 0 else workers
        loader = TrainLoader(dataset, size["loader_batch"], num_workers=workers, bucket_batches=0)
        rate = data_bench.best_of({"loader": lambda: sum(len(b["texts"]) for b in loader.epoch(0))}, 1)["loader"]
    waits = rate < train_rate
    verdict = "the GPU would wait for data" if waits else "the loader keeps up"
    return [{"part": "data", "name": f"loader, FLAC 44.1 kHz 10 s -> 7 s crops, {workers} workers", "rate": rate,
             "unit": "clips/s", "ratio": rate / train_rate, "vs": "train step",
             "note": f"{verdict} (recipe: {recipe_workers} workers)"},
            {"part": "data", "name": "best training step consumes", "rate": train_rate, "unit": "clips/s", "note": ""}]


def smollm2_part(device: str, size: dict) -> list[dict]:
    """A SmolLM2-135M-shaped Llama: pengi-kit's decoding against transformers' generate, same prefix."""
    lm = gen_bench.build_llama(device, size["llama_layers"], size["llama_vocab"])
    prefix = gen_bench.random_prefix(lm, max(size["llama_batches"]))
    rows = []
    for r in gen_bench.versus_transformers(lm, prefix, list(size["llama_batches"]), BEAM, size["new_tokens"], device,
                                           breakdown=False):
        b, part = r["batch"], f"smollm2 b{r['batch']}"
        rows.append({"part": part, "name": "transformers generate (same prefix)", "rate": b / r["theirs"],
                     "unit": "clips/s", "note": "num_beams=5, length_penalty=1, early_stopping=False"})
        rows.append({"part": part, "name": "pengi-kit, compat='none'", "rate": b / r["ours"], "unit": "clips/s",
                     "ratio": r["ratio"], "vs": "transformers", "note": f"same tokens as transformers {r['same']}/{b}"})
    return rows


def lora_part(device: str, size: dict) -> list[dict]:
    """Pengi steps with the SmolLM2-135M-shaped LM frozen, with LoRA and fully trained, each in a fresh process."""
    runs = train_bench.lora_runs(device, size["lora_batch"], size["steps"], size["warmup"], size["llama_layers"],
                                 size["llama_vocab"])
    full, rows = runs["full"], []
    for config in ("full", "lora", "frozen"):
        r = runs[config]
        row = {"part": "lm train", "name": train_bench.LM_CONFIGS[config], "rate": r["rate"], "unit": "samples/s",
               "memory_mib": r["peak_mib"], "note": f"{r['trainable_lm']:,} trainable LM parameters"}
        if config != "full":
            row.update(ratio=r["rate"] / full["rate"], vs="full fine-tuning")
            row["note"] += f", {r['peak_mib'] / full['peak_mib']:.2f}x its peak memory"
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------- table
def device_line(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} torch thread(s)"


def fmt(value, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def table(rows: list[dict], header: list[str]) -> str:
    cells = [["part", "configuration", "rate", "peak MiB", "MFU", "ratio", "note"]]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x vs {r['vs']}" if r.get("ratio") is not None else "-"
        cells.append([r["part"], r["name"], fmt(r["rate"], ".2f") + (" " + r["unit"] if r["rate"] is not None else ""),
                      fmt(r.get("memory_mib"), ".0f") if r["part"].endswith("train") else "-",
                      (fmt(r["mfu"] * 100 if r.get("mfu") is not None else None, ".1f") + ("%" if r.get("mfu") else ""))
                      if r["part"] == "train" else "-", ratio, r.get("note", "")])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    lines = [" | ".join(c[i].ljust(w) for i, w in enumerate(widths)) + " | " + c[-1] for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(["# " + h for h in header] + lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script on the CPU in seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=-1, help="loader workers (default: the recipe's, at most 8)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile configuration")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's peak (default: the table in "
                        "pengi_kit.engine.flops)")
    parser.add_argument("--json", help="also write the rows and header as JSON to this file")
    parser.add_argument("--command", default="", help="the command line to print (gpu.sh passes its own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # eager fp32 means fp32
    size = SIZES["smoke" if args.smoke else "full"]
    workers = args.workers if args.workers >= 0 or not args.smoke else min(2, os.cpu_count() or 1)
    compile_ = args.device.startswith("cuda") and not args.no_compile
    import transformers

    start = time.perf_counter()
    rows, train_rate = train_part(args.device, size, compile_, args.peak_tflops)
    t_train = time.perf_counter()
    rows += decode_part(args.device, size)
    t_decode = time.perf_counter()
    rows += data_part(train_rate, size, workers)
    t_data = time.perf_counter()
    rows += smollm2_part(args.device, size)
    t_smollm2 = time.perf_counter()
    rows += lora_part(args.device, size)
    end = time.perf_counter()
    mode = "SMOKE (tiny sizes: checks the script, not speed)" if args.smoke else \
        "Pengi-base shape, random weights (HTSAT-tiny, CLIP-B/16-size text, 2x4-layer mappers k=40, GPT-2 base)"
    header = [f"pengi-kit benchmarks/gpu.sh -- {mode}",
              f"device: {device_line(args.device)}",
              f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
              f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
              f"command: {args.command or shlex.join([sys.executable, *sys.argv])}",
              f"train: batch {size['train_batch']}, {size['steps']} timed steps after {size['warmup']} warm-up; "
              "MFU = samples/s x FLOPs/sample (the model's flops(): forward + backward as autograd runs it, "
              "frozen- and LoRA-aware) / the precision's dense peak; n/a on CPU",
              f"decode: beam {BEAM}, {size['new_tokens']} new tokens; tokens agree where the algorithms agree: "
              "reference = compat='pengi' (length-normalised ranking, stops when all beams stop); "
              "transformers = compat='none' (k finished hypotheses, sum/len**1)",
              f"smollm2: Llama of SmolLM2-135M shape ({size['llama_layers']} layers, vocabulary {size['llama_vocab']}), "
              f"random prefix of 80 embeddings, beam {BEAM}, {size['new_tokens']} new tokens; lm train: that LM in a "
              f"Pengi step with a tiny audio side, batch {size['lora_batch']}, fp32, LoRA rank 8 on q/k/v/o_proj, "
              "each configuration in a fresh process",
              f"time: train {t_train - start:.0f} s, decode {t_decode - t_train:.0f} s, data {t_data - t_decode:.0f} s, "
              f"smollm2 {t_smollm2 - t_data:.0f} s, lm train {end - t_smollm2:.0f} s"]
    print(table(rows, header))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
