"""The offline demo: train the demo recipe on synthetic clips, then score held-out clips."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from pengi_kit.data.synthetic import TASKS, SyntheticCorpus


def evaluate_synthetic(pengi: Any, corpus: SyntheticCorpus, batch_size: int = 64,
                       **decoding: Any) -> tuple[dict[str, float], dict[str, list[tuple[str, str, str]]]]:
    """Exact-match accuracy per prompt type on ``corpus``, and (prompt, target, output) samples."""
    rows = [(task, clip.audio, prompt, target)
            for clip in (corpus.clip(i) for i in range(len(corpus)))
            for task, prompt, target in clip.examples()]
    outputs = pengi.generate([(r[1], corpus.sample_rate) for r in rows], [r[2] for r in rows],
                             batch_size=batch_size, progress=True, **decoding)
    hits: dict[str, list[bool]] = defaultdict(list)
    samples: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for (task, _, prompt, target), output in zip(rows, outputs):
        hits[task].append(output == target)
        samples[task].append((prompt, target, output))
    return {t: sum(hits[t]) / len(hits[t]) for t in TASKS}, dict(samples)


def report(accuracy: dict[str, float], samples: dict[str, list[tuple[str, str, str]]], shown: int = 3) -> str:
    lines = ["", "Sample generations on held-out clips:"]
    for task in TASKS:
        for prompt, target, output in samples[task][:shown]:
            mark = "ok " if output == target else "   "
            lines.append(f"  {mark}[{task}] {prompt!r} -> {output!r} (expected {target!r})")
    lines += ["", "Held-out exact-match accuracy:"]
    lines += [f"  {task:<15} {accuracy[task]:.3f}" for task in TASKS]
    return "\n".join(lines)
