"""A seeded synthetic corpus for the offline demo: nothing is shipped as files.

Each clip holds one to three events of a primary kind, optionally followed by one event
of another kind, over faint noise. Every clip comes with a caption, a class label, two
yes/no questions (one about a kind it holds, one about a kind it lacks: the pair forces
a model to read the question; the answers repeat the kind, which teaches the model to
carry it from the prompt) and a counting question, so captioning, classification
and question answering prompts are all exercised.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("low tone", "high tone", "rising chirp", "falling chirp", "noise burst", "click train")
PLURAL = {k: k + "s" for k in KINDS}
NUMBERS = ("zero", "one", "two", "three")
TASKS = ("caption", "classification", "yes/no", "count")
PROMPTS_PER_CLIP = 5


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray
    primary: str
    count: int
    secondary: str | None
    absent: str  # the kind the "no" question asks about

    @property
    def caption(self) -> str:
        head = f"a {self.primary}" if self.count == 1 else f"{NUMBERS[self.count]} {PLURAL[self.primary]}"
        return head + (f" followed by a {self.secondary}" if self.secondary else "")

    @property
    def labels(self) -> list[str]:
        """The sound kinds the clip holds, primary first: its tags for multi-label tagging."""
        return [self.primary] + ([self.secondary] if self.secondary else [])

    def descriptions(self) -> list[str]:
        """Texts that describe the clip for contrastive (CLAP) pretraining: its caption, and its
        class in the words of zero-shot classification (``pengi-kit evaluate --task classification``
        asks "this is a sound of <class>"), as LAION-CLAP turns AudioSet tags into texts."""
        return [self.caption, f"this is a sound of {self.primary}"]

    def examples(self) -> list[tuple[str, str, str]]:
        """(task, prompt, target) for each of the clip's prompts."""
        present = self.secondary if self.secondary and self.count % 2 else self.primary
        return [
            ("caption", "generate audio caption", self.caption),
            ("classification", "this is a sound of", self.primary),
            ("yes/no", f"question: is there a {present}?", f"yes, there is a {present}"),
            ("yes/no", f"question: is there a {self.absent}?", f"no, there is no {self.absent}"),
            ("count", f"question: how many {PLURAL[self.primary]} are there?", NUMBERS[self.count]),
        ]


def _event(kind: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    if kind == "low tone":
        x = np.sin(2 * np.pi * rng.uniform(200, 400) * t)
    elif kind == "high tone":
        x = np.sin(2 * np.pi * rng.uniform(1500, 0.3 * sr) * t)
    elif kind in ("rising chirp", "falling chirp"):
        lo, hi = rng.uniform(200, 500), rng.uniform(0.15 * sr, 0.3 * sr)
        f0, f1 = (lo, hi) if kind == "rising chirp" else (hi, lo)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
    elif kind == "noise burst":
        x = rng.uniform(-1, 1, n)
    else:  # click train
        x = np.zeros(n)
        x[:: int(sr * rng.uniform(0.015, 0.03))] = 1.0
    fade = min(n // 4, int(0.01 * sr))
    env = np.ones(n)
    env[:fade], env[n - fade:] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
    return x * env * rng.uniform(0.4, 0.9)


class SyntheticCorpus:
    """``size`` clips, clip ``i`` a pure function of (seed, i): any worker, any order."""

    def __init__(self, size: int, seed: int = 0, sample_rate: int = 16000, clip_seconds: float = 2.0) -> None:
        self.size, self.seed, self.sample_rate, self.clip_seconds = size, seed, sample_rate, clip_seconds

    def __len__(self) -> int:
        return self.size

    def clip(self, index: int) -> Clip:
        rng = np.random.default_rng([self.seed, index])
        sr = self.sample_rate
        total = int(self.clip_seconds * sr)
        primary = KINDS[rng.integers(len(KINDS))]
        count = int(rng.integers(1, 4))
        others = [k for k in KINDS if k != primary]
        secondary = others[rng.integers(len(others))] if rng.random() < 0.5 else None
        absent = [k for k in KINDS if k not in (primary, secondary)]
        kinds = [primary] * count + ([secondary] if secondary else [])
        audio = rng.normal(0, 0.01, total)
        slot = total // len(kinds)  # events in order, each in its own slot
        for i, kind in enumerate(kinds):
            n = int(rng.uniform(0.35, 0.7) * slot)
            start = i * slot + int(rng.integers(0, slot - n))
            audio[start:start + n] += _event(kind, n, sr, rng)
        return Clip(np.clip(audio, -1, 1).astype(np.float32), primary, count, secondary,
                    absent[rng.integers(len(absent))])


def words() -> list[str]:
    """Every word a prompt or target of the corpus uses."""
    texts = ["generate audio caption", "this is a sound of", "question is there a how many are",
             "followed by yes no", *NUMBERS, *KINDS, *PLURAL.values()]
    return sorted({w for t in texts for w in t.split()})


def tokenizer():
    """The demo's word-level tokenizer (recipes: ``tokenizer = "pengi_kit.data.synthetic:tokenizer"``):
    short targets keep one-word answers from being drowned by long captions in the loss."""
    from pengi_kit.data.tokenizer import word_tokenizer

    return word_tokenizer(words())


# ---------------------------------------------------------------------- a two-clip task, as files

PAIR_KINDS = ("low tone", "high tone", "noise burst")
SAME_KIND = "question: are the two sounds of the same kind?"
WHAT_KIND = "what is this sound?"


def write_pair_task(folder: str | Path, pairs: int, seed: int = 0, sample_rate: int = 16000,
                    seconds: float = 0.5) -> tuple[Path, Path]:
    """The chat layout's walk-through data (docs/training.md, "Conversations"), written as users
    keep theirs: ``2 * pairs`` clips of one sound each (:data:`PAIR_KINDS`) under
    ``folder/clips/``; ``folder/conversations.json`` in LLaMA-Factory's format, a two-clip question
    per pair (:data:`SAME_KIND`: "yes" for half the pairs, so one clip alone tells nothing); and
    ``folder/kinds.jsonl``, a Pengi manifest with a one-clip question per clip (:data:`WHAT_KIND`,
    answered by its kind: what an encoder is pretrained on). Returns the two files' paths."""
    import json

    import soundfile as sf

    folder = Path(folder)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = int(seconds * sample_rate)
    rows, manifest = [], []
    for i in range(pairs):
        first = PAIR_KINDS[rng.integers(len(PAIR_KINDS))]
        others = [k for k in PAIR_KINDS if k != first]
        names = []
        for n, kind in enumerate((first, first if i % 2 == 0 else others[rng.integers(len(others))])):
            audio = rng.normal(0, 0.01, total)
            length = int(rng.uniform(0.5, 0.9) * total)
            start = int(rng.integers(0, total - length))
            audio[start:start + length] += _event(kind, length, sample_rate, rng)
            names.append(f"clips/{i}_{n}.wav")
            sf.write(folder / names[-1], np.clip(audio, -1, 1).astype(np.float32), sample_rate)
            manifest.append({"audio": names[-1], "prompt": WHAT_KIND, "text": kind})
        rows.append({"messages": [{"role": "user", "content": f"<audio><audio>{SAME_KIND}"},
                                  {"role": "assistant", "content": "yes" if i % 2 == 0 else "no"}],
                     "audios": names})
    conversations, kinds = folder / "conversations.json", folder / "kinds.jsonl"
    conversations.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    kinds.write_text("".join(json.dumps(r) + "\n" for r in manifest), encoding="utf-8")
    return conversations, kinds


def pair_tokenizer():
    """A word-level tokenizer of the two-clip task and of the default chat template's roles
    (``tokenizer = "pengi_kit.data.synthetic:pair_tokenizer"``)."""
    from pengi_kit.data.tokenizer import word_tokenizer

    return word_tokenizer([f"system user assistant yes no {SAME_KIND} {WHAT_KIND} {' '.join(PAIR_KINDS)}"])
