"""Log-mel front-end speed: pengi-kit (torch.stft) against torchlibrosa (Conv1d DFT).

Both run in this process on the same batch -- 16 ten-second clips at 32 kHz, window
1024, hop 320, 64 mels -- under torch.no_grad; the best of N runs is kept.

    python benchmarks/frontend.py [--repeats 5] [--batch 16] [--threads N]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from pengi_kit.components.frontend import LogMelFrontEnd


def best_of(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()  # warm-up: allocator, MKL/FFT plans
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from torchlibrosa.stft import LogmelFilterBank, Spectrogram
    except ImportError:
        raise SystemExit("this benchmark compares against torchlibrosa: pip install torchlibrosa") from None

    sr, n_fft, hop = 32000, 1024, 320
    ours = LogMelFrontEnd(sr, n_fft, hop, 64, 50, 14000).eval()
    spec = Spectrogram(n_fft=n_fft, hop_length=hop, win_length=n_fft, window="hann", center=True,
                       pad_mode="reflect", freeze_parameters=True).eval()
    logmel = LogmelFilterBank(sr=sr, n_fft=n_fft, n_mels=64, fmin=50, fmax=14000, ref=1.0, amin=1e-10,
                              top_db=None, freeze_parameters=True).eval()
    wave = torch.rand(args.batch, int(sr * args.seconds), generator=torch.Generator().manual_seed(0)) * 2 - 1

    with torch.no_grad():
        err = (ours(wave) - logmel(spec(wave))).abs().max().item()
        t_ours = best_of(lambda: ours(wave), args.repeats)
        t_ref = best_of(lambda: logmel(spec(wave)), args.repeats)
    print(f"batch {args.batch} x {args.seconds:g} s at {sr} Hz, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"torchlibrosa : {t_ref * 1e3:9.1f} ms")
    print(f"pengi-kit    : {t_ours * 1e3:9.1f} ms")
    print(f"speed-up     : {t_ref / t_ours:9.2f}x  (max |diff| {err:.2e} dB)")


if __name__ == "__main__":
    main()
