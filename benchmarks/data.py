"""Clip loading speed: pengi-kit's dataset against a naive librosa.load + crop.

Both run in this process on the same files -- N ten-second 44.1 kHz clips written to a
temporary folder (16-bit WAV by default) -- and produce the same thing: a mono
float32 crop of ``--crop`` seconds at 32 kHz (Pengi's HTS-AT rate). pengi-kit
(``ManifestDataset``, i.e. ``load_audio`` with ``clip_seconds``) picks the crop in the
file's own frames and decodes and resamples only that; the baseline decodes and
resamples the whole file (``librosa.load(path, sr=32000)``, soxr_hq) and then crops.
Each side reads every clip once per round, rounds alternate between the two sides,
and the best of ``--repeats`` rounds is kept.
``--workers N`` also times pengi-kit's DataLoader with N worker processes.

    python benchmarks/data.py [--clips 64] [--repeats 3] [--crop 7] [--format wav|flac] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

SOURCE_RATE, TARGET_RATE, SECONDS = 44100, 32000, 10.0


def best_of(fns: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Clips per second of each function's fastest round; rounds alternate between the
    functions so that a change in machine load hits both alike. One warm-up round each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, 0.0)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            clips = fn()
            best[name] = max(best[name], clips / (time.perf_counter() - start))
    return best


def write_clips(folder: Path, count: int, fmt: str) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(SOURCE_RATE * SECONDS)) / SOURCE_RATE
    lines = []
    for i in range(count):
        wav = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t) + 0.05 * rng.standard_normal(len(t))
        path = folder / f"clip{i:04d}.{fmt}"
        sf.write(path, wav.astype(np.float32), SOURCE_RATE, subtype="PCM_16")
        lines.append(json.dumps({"audio": path.name, "prompt": "generate audio caption", "text": f"clip {i}"}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop", type=float, default=7.0, help="seconds kept of each 10-second clip")
    parser.add_argument("--format", choices=("wav", "flac"), default="wav")
    parser.add_argument("--workers", type=int, default=0, help="also time the DataLoader with this many workers")
    args = parser.parse_args()
    try:
        import librosa
    except ImportError:
        raise SystemExit("this benchmark compares against librosa: pip install librosa") from None
    from pengi_kit.data.dataset import ManifestDataset

    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_clips(Path(tmp), args.clips, args.format)
        paths = sorted(Path(tmp).glob(f"*.{args.format}"))
        need = int(round(args.crop * TARGET_RATE))
        dataset = ManifestDataset(manifest, TARGET_RATE, args.crop, "random", seed=0)

        def ours() -> int:
            for i in range(len(dataset)):
                item = dataset[i]
                assert item["audio"].shape == (need,)
            return len(dataset)

        rng = np.random.default_rng(0)

        def naive() -> int:
            for path in paths:
                wav, _ = librosa.load(path, sr=TARGET_RATE)
                offset = int(rng.integers(0, len(wav) - need + 1))
                crop = wav[offset : offset + need]
                assert crop.shape == (need,)
            return len(paths)

        rates = best_of({"ours": ours, "naive": naive}, args.repeats)
        ours_rate, naive_rate = rates["ours"], rates["naive"]
        print(f"{args.clips} clips of {SECONDS:g} s at {SOURCE_RATE} Hz ({args.format.upper()} PCM_16) -> "
              f"{args.crop:g} s crop at {TARGET_RATE} Hz, one process, best of {args.repeats}; "
              f"librosa {librosa.__version__} (res_type soxr_hq)")
        print(f"librosa.load + crop : {naive_rate:8.1f} clips/s")
        print(f"pengi-kit dataset   : {ours_rate:8.1f} clips/s")
        print(f"speed-up            : {ours_rate / naive_rate:8.2f}x")
        if args.workers:
            from pengi_kit.data.loader import TrainLoader

            loader = TrainLoader(dataset, 8, num_workers=args.workers, bucket_batches=0)

            def workers() -> int:
                return sum(len(b["texts"]) for b in loader.epoch(0))

            rate = best_of({"workers": workers}, args.repeats)["workers"]
            print(f"pengi-kit DataLoader, {args.workers} workers: {rate:8.1f} clips/s "
                  "(workers start anew each epoch; on few or busy cores this can lose to one process)")


if __name__ == "__main__":
    main()
