"""benchmarks/gpu.sh cannot rot: its --smoke size runs here, on the CPU, and prints the whole table."""
from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
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
    assert len(ratios) == 1 + 2 * 2 + 1, out  # train best, pengi/reference and pengi/transformers per batch, data
    for key, m in ratios.items():
        assert m and math.isfinite(float(m.group(1))) and float(m.group(1)) > 0, (key, out)
    # the compat='pengi' path must reproduce the reference's tokens, as benchmarks/generation.py asserts
    assert "same tokens as the reference 1/1" in table[("decode b1", "pengi-kit, compat='pengi'")][6]
    verdict = next(row[6] for (part, name), row in table.items() if part == "data" and name.startswith("loader"))
    assert "the GPU would wait for data" in verdict or "the loader keeps up" in verdict
