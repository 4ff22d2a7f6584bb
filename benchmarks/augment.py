"""The cost of augmentation in the data pipeline: training items per second (one process, one
thread: what one data worker delivers) from a manifest of clips, without augmentation and with
each change of ``[data.augment]`` alone and all together, each as a ratio to none.

    python benchmarks/augment.py [--clips 64] [--seconds 7] [--rate 32000] [--repeats 3]
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

CONFIGS = {
    "none": {},
    "gain + shift": {"gain_db": [-6.0, 6.0], "shift": 0.2},
    "speed 0.9-1.1": {"speed": [0.9, 1.1]},
    "pitch +-2 semitones": {"pitch_semitones": [-2.0, 2.0]},
    "white noise": {"noise": "white", "noise_prob": 1.0},
    "room reverberation": {"reverb": "room", "reverb_prob": 1.0},
}
CONFIGS["all of them"] = {k: v for config in CONFIGS.values() for k, v in config.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=7.0, help="clip length (Pengi's HTSAT: 7 s)")
    parser.add_argument("--rate", type=int, default=32000, help="the encoder's rate (Pengi: 32000 ... 44100)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from pengi_kit.data.augment import Augment
    from pengi_kit.data.dataset import ManifestDataset

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    rows = []
    for i in range(args.clips):  # 44.1 kHz files, resampled on loading as real corpora are
        sf.write(folder / f"{i}.wav", (0.1 * rng.standard_normal(int(44100 * args.seconds))).astype(np.float32), 44100)
        rows.append({"audio": f"{i}.wav", "text": "x", "prompt": "p"})
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rates = {}
    for name, config in CONFIGS.items():
        dataset = ManifestDataset(folder / "m.jsonl", args.rate, args.seconds, "random",
                                  augment=Augment(**config) if config else None)
        best = 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            for i in range(len(dataset)):
                dataset[i]
            best = max(best, len(dataset) / (time.perf_counter() - start))
        rates[name] = best
        print(f"{name:<22} {best:7.1f} clips/s  {best / rates['none']:.2f}x of none", flush=True)
    print(f"({args.clips} clips of {args.seconds:g} s at 44.1 kHz, loaded at {args.rate} Hz; one thread; "
          f"fastest of {args.repeats})")


if __name__ == "__main__":
    main()
