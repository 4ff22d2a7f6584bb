"""The benchmarks cannot rot: benchmarks/gpu.sh's --smoke size and the LM modes of generation.py and
train_step.py (issue 14) run here, on the CPU, at tiny sizes, and their figures are checked."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # every test runs a benchmark script in a subprocess: not in the fast lane


def test_gpu_script_smoke_prints_every_row_with_finite_ratios():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # item 5 of issue 16: the header says where and how the figures were measured
    for line in ("# device: CPU", "# torch ", "# date: ", "# command: bash benchmarks/gpu.sh --smoke"):
        assert line in out, out
    rows = [[c.strip() for c in line.split("|")] for line in out.splitlines() if line.count("|") == 6]
    table = {(r[0], r[1]): r for r in rows[1:]}
    expected = [("train", "eager fp32"), ("train", "fp32 (bf16/fused are GPU settings)"), ("train", "+ torch.compile"),
                ("data", "best training step consumes")]
    for b in (1, 4):
        expected += [(f"decode b{b}", name) for name in (
            "uncached reference, 1 clip at a time", "pengi-kit, compat='pengi'",
            "transformers generate (same prefix)", "pengi-kit, compat='none'")]
    for key in expected:
        assert key in table, (key, out)
    for b in (1, 2):  # issue 14: a SmolLM2-135M-shaped Llama against transformers' generate
        expected += [(f"smollm2 b{b}", "transformers generate (same prefix)"), (f"smollm2 b{b}", "pengi-kit, compat='none'")]
    expected += [("lm train", name) for name in ("LM fully fine-tuned", "LoRA on the LM", "LM frozen (Pengi)")]
    assert any(part == "data" and name.startswith("loader, FLAC 44.1 kHz") for part, name in table), out
    assert len(table) == len(expected) + 1, out
    # every rate that was measured is a positive finite number; MFU is n/a on the CPU
    for (part, name), row in table.items():
        if name != "+ torch.compile":
            rate = float(row[2].split()[0])
            assert math.isfinite(rate) and rate > 0, row
        if part == "train":
            assert row[4] == "n/a", row
    ratios = {key: re.match(r"([0-9.]+)x vs ", row[5]) for key, row in table.items() if row[5] != "-"}
    # train best, pengi/reference and pengi/transformers per batch, data, smollm2 per batch, LoRA and frozen vs full
    assert len(ratios) == 1 + 2 * 2 + 1 + 2 + 2, out
    for key, m in ratios.items():
        assert m and math.isfinite(float(m.group(1))) and float(m.group(1)) > 0, (key, out)
    # the compat='pengi' path must reproduce the reference's tokens, as benchmarks/generation.py asserts
    assert "same tokens as the reference 1/1" in table[("decode b1", "pengi-kit, compat='pengi'")][6]
    for b in (1, 2):
        assert f"same tokens as transformers {b}/{b}" in table[(f"smollm2 b{b}", "pengi-kit, compat='none'")][6]
    # one Llama layer, rank 8 on q/k/v/o_proj (576->576, 576->192, 576->192, 576->576): 8 x 3840 adapter weights
    lm_train = {name: row for (part, name), row in table.items() if part == "lm train"}
    assert lm_train["LoRA on the LM"][6].startswith("30,720 trainable LM parameters"), out
    assert lm_train["LM frozen (Pengi)"][6].startswith("0 trainable LM parameters"), out
    full_params = int(lm_train["LM fully fine-tuned"][6].split()[0].replace(",", ""))
    assert full_params > 10 * 30720, out  # every LM weight: embeddings, attention, MLP, norms
    assert all(float(row[3]) > 0 for row in lm_train.values()), out  # peak MiB measured in each fresh process
    verdict = next(row[6] for (part, name), row in table.items() if part == "data" and name.startswith("loader"))
    assert "the GPU would wait for data" in verdict or "the loader keeps up" in verdict


def _run_script(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args, "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_generation_smollm2_mode_returns_transformers_tokens():
    # issue 14: a Llama-type LM (SmolLM2-135M shape, 1 layer here) decodes the same tokens as
    # transformers' generate(inputs_embeds=..., num_beams=5), at each batch size, and reports both times
    out = _run_script("benchmarks/generation.py", "--lm", "smollm2-135m", "--layers", "1", "--vocab", "300",
                      "--max-new-tokens", "4", "--batches", "1,3")
    rows = re.findall(r"batch +(\d+): pengi-kit +([0-9.]+) s, transformers generate +([0-9.]+) s: ([0-9.]+)x; "
                      r"same tokens (\d+)/(\d+); tokens per row (\d+)-(\d+)", out)
    assert [r[0] for r in rows] == ["1", "3"], out
    for batch, ours, theirs, ratio, same, total, shortest, longest in rows:
        assert same == total == batch, out
        assert float(ours) > 0 and float(theirs) > 0 and math.isfinite(float(ratio)) and float(ratio) > 0, out
        assert shortest == longest == "4", out  # random weights: no row stops early
    assert out.count("per further token: pengi-kit") == 2, out


def test_train_step_lora_mode_counts_adapters_and_saves_memory():
    # three fresh processes: the LM frozen, with LoRA, fully fine-tuned (one Llama layer of SmolLM2 shape)
    out = _run_script("benchmarks/train_step.py", "--lora", "--lm-layers", "1", "--vocab", "300", "--batch-size", "1",
                      "--steps", "1", "--warmup", "0")
    rows = {m[0]: [int(m[1].replace(",", "")), int(m[2].replace(",", "")), float(m[3]), float(m[4])]
            for m in re.findall(r"^ *(.+?) \| +([0-9,]+) \| +([0-9,]+) \| +([0-9.]+) \| ([0-9.]+)$", out, re.M)}
    assert set(rows) == {"LM frozen (Pengi)", "LoRA on the LM", "LM fully fine-tuned"}, out
    frozen, lora, full = rows["LM frozen (Pengi)"], rows["LoRA on the LM"], rows["LM fully fine-tuned"]
    # rank 8 on q/k/v/o_proj (576->576, 576->192, 576->192, 576->576): 8 x 3840 adapter weights
    assert (frozen[1], lora[1]) == (0, 30720), out
    assert lora[0] - frozen[0] == 30720 and full[0] - frozen[0] == full[1] > 3_000_000, out  # the rest is shared
    # full fine-tuning adds a gradient and two Adam moments per LM weight (12 bytes); LoRA does not
    assert full[3] - lora[3] > 0.5 * 12 * full[1] / 2**20, out
    assert all(r[2] > 0 and r[3] > 0 for r in rows.values()), out
    assert "LoRA / full fine-tuning: 0.0083x trainable LM parameters" in out, out


def test_batching_by_duration_pads_less_and_trains_faster():
    # issue 27: on the skewed corpus, batches by duration against fixed batches at equal memory
    out = _run_script("benchmarks/batching.py", "--clips", "64")
    rows = re.findall(r"(batch_size = 8|batch_seconds = 240): (\d+) steps, (\d+) examples, audio padding ([0-9.]+)%, "
                      r"([0-9.]+) examples/s", out)
    assert [r[0] for r in rows] == ["batch_size = 8", "batch_seconds = 240"], out
    (_, _, _, fixed_pad, _), (_, _, _, timed_pad, _) = rows
    assert float(timed_pad) < 10 < float(fixed_pad), out
    ratio = float(re.search(r"batches by duration: ([0-9.]+)x", out).group(1))
    assert ratio > 1.0, out


def test_serving_batches_concurrent_clients_and_keeps_their_answers(untrained_checkpoint):
    # issue 28: the same requests one at a time and from concurrent clients, through one server
    out = _run_script("benchmarks/serving.py", "--checkpoint", str(untrained_checkpoint), "--requests", "16",
                      "--clients", "8")
    assert "answers equal to the one-at-a-time answers: 16/16" in out, out
    rows = dict(re.findall(r"^(one at a time|8 concurrent clients)\s+\|\s+([0-9.]+)", out, re.M))
    assert set(rows) == {"one at a time", "8 concurrent clients"} and all(float(v) > 0 for v in rows.values()), out
    assert float(re.search(r"throughput ratio \(concurrent / one at a time\): ([0-9.]+)x", out).group(1)) > 0, out
