"""A two-clip task for the chat layout, written to files the way users keep theirs: clips, a
conversation file in LLaMA-Factory's format, and a Pengi manifest of one-clip questions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from pengi_kit.data.synthetic import _event

KINDS = ("low tone", "high tone", "noise burst")
SAME = "question: are the two sounds of the same kind?"
WHAT = "what is this sound?"
RATE = 16000


def clip(kind: str, rng: np.random.Generator, seconds: float = 0.5) -> np.ndarray:
    n = int(seconds * RATE)
    audio = rng.normal(0, 0.01, n)
    length = int(rng.uniform(0.5, 0.9) * n)
    start = int(rng.integers(0, n - length))
    audio[start:start + length] += _event(kind, length, RATE, rng)
    return np.clip(audio, -1, 1).astype(np.float32)


def write_task(folder: Path, pairs: int, seed: int) -> tuple[Path, Path, list[tuple[str, str, str]]]:
    """``pairs`` two-clip questions (half of one kind, half of two), and a one-clip question per
    clip: (conversations.json, manifest.jsonl, [(clip a, clip b, answer)])."""
    rng = np.random.default_rng(seed)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rows, manifest, truth = [], [], []
    for i in range(pairs):
        a = KINDS[rng.integers(len(KINDS))]
        b = a if i % 2 == 0 else rng.choice([k for k in KINDS if k != a])
        names = []
        for n, kind in enumerate((a, b)):
            name = f"clips/{i}_{n}.wav"
            sf.write(folder / name, clip(str(kind), rng), RATE)
            names.append(name)
            manifest.append({"audio": name, "prompt": WHAT, "text": str(kind)})
        answer = "yes" if a == b else "no"
        rows.append({"messages": [{"role": "user", "content": f"<audio><audio>{SAME}"},
                                  {"role": "assistant", "content": answer}], "audios": names})
        truth.append((str(folder / names[0]), str(folder / names[1]), answer))
    conversations, single = folder / "conversations.json", folder / "kinds.jsonl"
    conversations.write_text(json.dumps(rows, indent=1))
    single.write_text("".join(json.dumps(r) + "\n" for r in manifest))
    return conversations, single, truth


def words() -> list[str]:
    return ["user", "assistant", "system", "yes", "no", *SAME.split(), *WHAT.split(), *" ".join(KINDS).split()]
