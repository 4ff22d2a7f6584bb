"""Batches by duration (``train.batch_seconds``) against batches of a fixed number of rows, at equal
memory, on a skewed corpus this script builds: clips of 1-30 s (log-uniform: most are short),
answers of 1-60 words. A CNN14 that takes clips of any length (width 4) and a two-layer GPT-2;
one epoch each, side by side in one process. Prints the padded fraction of the audio the encoder
ran on, and training examples per second.

    python benchmarks/batching.py [--clips 160] [--threads 1]

Equal memory: the fixed batches hold ``--rows`` rows, so up to ``rows * 30`` seconds of padded
audio; ``batch_seconds`` is that same budget.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

RATE = 16000


def corpus(folder: Path, clips: int) -> Path:
    from pengi_kit.data.synthetic import KINDS, _event

    rng = np.random.default_rng(0)
    words = " ".join(KINDS).split()
    rows = []
    (folder / "clips").mkdir(parents=True)
    for i in range(clips):
        seconds = float(np.exp(rng.uniform(np.log(1), np.log(30))))
        n = int(seconds * RATE)
        audio = rng.normal(0, 0.01, n) + _event(KINDS[i % len(KINDS)], n, RATE, rng)
        sf.write(folder / "clips" / f"{i}.wav", audio.astype(np.float32), RATE, subtype="PCM_16")
        answer = " ".join(rng.choice(words, int(rng.integers(1, 61))))
        rows.append({"audio": f"clips/{i}.wav", "prompt": "generate audio caption", "text": answer})
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def epoch(manifest: Path, out: Path, rows: int, batch_seconds: float) -> dict[str, float]:
    """One epoch: its examples per second (from the first step's end to the last's: the first step
    pays for warm-up), the mean padded fraction of the audio, and the steps."""
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    raw = tiny_recipe(out, train={"batch_size": rows, "batch_seconds": batch_seconds, "epochs": 1, "max_steps": 0,
                                  "log_every": 1, "save_every": 10_000})
    raw["model"]["audio_encoder"].update(clip_seconds=0, width=4)
    raw["model"]["lm"].update(n_layer=2, n_positions=128)
    raw["model"]["target_length"] = 64
    raw["data"] = {"train": str(manifest), "valid": ""}
    trainer = Trainer(from_dict(raw), overwrite=True, progress=False)
    used, _ = trainer.loader.examples_per_epoch()
    trainer.fit()
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    seconds = steps[-1]["time"] - steps[0]["time"]
    return {"examples_per_s": used * (len(steps) - 1) / len(steps) / seconds, "steps": len(steps),
            "padding": float(np.mean([r["audio_padding"] for r in steps])), "examples": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=160)
    parser.add_argument("--rows", type=int, default=8, help="rows of a fixed batch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    manifest = corpus(tmp / "data", args.clips)
    print(f"corpus: {args.clips} clips of 1-30 s, answers of 1-60 words ({time.perf_counter() - start:.0f} s to write)")
    fixed = epoch(manifest, tmp / "fixed", args.rows, 0.0)
    budget = args.rows * 30.0
    timed = epoch(manifest, tmp / "seconds", args.rows, budget)
    for name, r in ((f"batch_size = {args.rows}", fixed), (f"batch_seconds = {budget:g}", timed)):
        print(f"{name:>22}: {r['steps']} steps, {r['examples']} examples, audio padding {r['padding']:.1%}, "
              f"{r['examples_per_s']:.2f} examples/s")
    print(f"batches by duration: {timed['examples_per_s'] / fixed['examples_per_s']:.2f}x the examples/s of fixed "
          f"batches at equal memory, {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
