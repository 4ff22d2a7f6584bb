"""Serving throughput: the same requests sent to one ``pengi-kit serve`` one at a time, then by
``--clients`` concurrent clients (continuous batching), side by side in one run, through OpenAI's
Python client. Prints requests/s and tokens/s of each, their ratio, the latency under concurrency
(p50, p99), and whether every concurrent answer equals the one-at-a-time answer.

    python benchmarks/serving.py [--checkpoint runs/demo] [--requests 64] [--clients 32] [--threads 1]

The requests: clips of the demo's synthetic corpus (a seed it never trains on), each asked one of
its five prompts (caption, class, two yes/no questions, count), as WAV bytes in ``input_audio``.
The server decodes with the checkpoint's own [generate] settings (the demo's: greedy, 16 tokens).
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import soundfile as sf


def requests(n: int, seed: int = 1234) -> list[list[dict]]:
    from pengi_kit.data.synthetic import SyntheticCorpus

    corpus = SyntheticCorpus(n, seed=seed)
    out = []
    for i in range(n):
        clip = corpus.clip(i)
        buffer = io.BytesIO()
        sf.write(buffer, clip.audio, corpus.sample_rate, format="WAV", subtype="PCM_16")
        prompt = clip.examples()[i % 5][1]
        out.append([{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(buffer.getvalue()).decode(),
                                                    "format": "wav"}},
            {"type": "text", "text": prompt}]}])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/demo", help="what `pengi-kit demo` leaves [runs/demo]")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads [1]")
    args = parser.parse_args()

    import openai

    from pengi_kit.server import spawned

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server inherits it
    asked = requests(args.requests)
    with spawned(args.checkpoint, "--device", "cpu", "--max-batch", str(args.clients), "--log-level", "warning") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id

        def ask(messages: list[dict]) -> tuple[str, int, float]:
            start = time.perf_counter()
            answer = client.chat.completions.create(model=model, messages=messages)
            return answer.choices[0].message.content, answer.usage.completion_tokens, time.perf_counter() - start

        ask(asked[0])  # warm-up
        start = time.perf_counter()
        alone = [ask(m) for m in asked]
        one_at_a_time = time.perf_counter() - start
        with ThreadPoolExecutor(args.clients) as pool:
            start = time.perf_counter()
            together = list(pool.map(ask, asked))
            concurrent = time.perf_counter() - start
    tokens = sum(t for _, t, _ in together)
    latencies = sorted(s for _, _, s in together)
    same = sum(a[0] == b[0] for a, b in zip(alone, together))
    print(f"# pengi-kit serve {args.checkpoint}: {args.requests} requests, server torch threads {args.threads}, "
          f"max batch {args.clients}; {os.cpu_count()} CPU cores")
    print(f"{'mode':<28}| {'requests/s':>10} | {'tokens/s':>9} | {'p50 s':>7} | {'p99 s':>7}")
    for name, seconds, rows in (("one at a time", one_at_a_time, alone),
                                (f"{args.clients} concurrent clients", concurrent, together)):
        lat = sorted(s for _, _, s in rows)
        print(f"{name:<28}| {len(rows) / seconds:>10.2f} | {sum(t for _, t, _ in rows) / seconds:>9.1f} | "
              f"{statistics.median(lat):>7.3f} | {lat[min(len(lat) - 1, int(0.99 * len(lat)))]:>7.3f}")
    print(f"throughput ratio (concurrent / one at a time): {one_at_a_time / concurrent:.2f}x")
    print(f"answers equal to the one-at-a-time answers: {same}/{len(asked)}")
    print(f"tokens generated under concurrency: {tokens}; p50 {statistics.median(latencies):.3f} s")
    if same != len(asked):
        sys.exit(1)


if __name__ == "__main__":
    main()
