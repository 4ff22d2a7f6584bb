"""The frozen-encoder cache (``train.encoder_cache``): seconds per training step in the second epoch,
with and without it, side by side in one process, on a Pengi whose frozen audio encoder is a fresh
Whisper of whisper-base's size (30 s windows) and whose LM is tiny: 8 synthetic clips of 2 s, batch 8.

    python benchmarks/encoder_cache.py [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def seconds_per_step(out: Path, cache: str) -> float:
    """Train 10 steps (two epochs of 5) and return the mean time of steps 7-10."""
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    whisper_base = {"name": "whisper", "pretrained": "", "trainable": False, "d_model": 512, "encoder_layers": 6,
                    "encoder_attention_heads": 8, "max_source_positions": 1500}
    raw = tiny_recipe(out, audio_encoder=whisper_base,
                      audio_mapper={"name": "qformer", "prefix_length": 4, "num_layers": 1, "num_heads": 2},
                      train={"max_steps": 10, "eval_every": 0, "save_every": 10, "log_every": 1,
                             "encoder_cache": cache})
    raw["data"] = {"synthetic_train_size": 8, "synthetic_valid_size": 8}
    Trainer(from_dict(raw), overwrite=True, progress=False).fit()
    times = [row["time"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in row]
    return (times[-1] - times[5]) / 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    cached = seconds_per_step(tmp / "cached", str(tmp / "cache"))
    plain = seconds_per_step(tmp / "plain", "")
    print(f"second epoch, seconds per step: {plain:.3f} without the cache, {cached:.3f} with it "
          f"({plain / cached:.0f}x), {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
