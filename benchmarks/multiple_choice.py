"""The cost of the multiple-choice scorers: seconds per item of scoring by likelihood (each
choice over a forked copy of the item's prefix) and of generating the answer (which the
official and strict rules read), alone, on one model, with their ratio; and the three scores.

    python benchmarks/multiple_choice.py [CHECKPOINT] [--manifest FILE] [--batch-size 32] [--repeats 3]

Defaults: the demo's checkpoint and its multiple-choice questions (``pengi-kit demo`` writes
both to runs/demo). One torch thread unless --threads.
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="runs/demo")
    parser.add_argument("--manifest", default="runs/demo/eval/multiple_choice.jsonl")
    parser.add_argument("--prompt", default="{question}", help="prompt template (the demo's questions as trained)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import pengi_kit
    from pengi_kit.evaluation.tasks import evaluate

    pengi = pengi_kit.load(args.checkpoint, device=args.device)
    seconds: dict[str, float] = {}
    results = {}
    for scoring in ("generate", "likelihood"):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[scoring] = evaluate(pengi, "multiple-choice", args.manifest, scoring=scoring, prompt=args.prompt,
                                        batch_size=args.batch_size)
            times.append(time.perf_counter() - start)
        seconds[scoring] = min(times)
    items = results["likelihood"].info["items"]
    print(f"{args.checkpoint} on {args.manifest}: {items} items, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s), {pengi.device}, best of {args.repeats}")
    for scoring, s in seconds.items():
        print(f"  {scoring:<10} {s:7.2f} s  ({1000 * s / items:6.1f} ms per item)")
    print(f"  likelihood / generate: {seconds['likelihood'] / seconds['generate']:.2f}x")
    for scoring, result in results.items():
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))


if __name__ == "__main__":
    main()
