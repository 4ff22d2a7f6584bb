"""Datasets of (audio, prompt, target) examples and their collation.

Items are dicts ``{"audio": float32 (T,), "prompt", "text", "task"}``, or
``{"error": "<one line>"}`` for an example that could not be loaded: the collator
drops those from the batch and hands the messages to the trainer, which reports them
(``data.on_error = "skip"``) or stops (``"fail"``). Nothing is dropped silently.
Tokenisation happens in the main process, so workers never carry the model. Datasets
expose ``load_errors`` (bad manifest lines, reported by the trainer like bad clips)
and, where cheap, ``text_lengths()`` for batching by target length.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from pengi_kit.data.synthetic import PROMPTS_PER_CLIP, SyntheticCorpus
from pengi_kit.errors import PengiKitError, RecipeError


class SyntheticDataset(Dataset):
    """Every clip of a synthetic corpus with each of its prompts."""

    def __init__(self, corpus: SyntheticCorpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return PROMPTS_PER_CLIP * len(self.corpus)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index %= len(self)  # a repeated draw (weight > 1) is the same example
        clip = self.corpus.clip(index // PROMPTS_PER_CLIP)
        task, prompt, text = clip.examples()[index % PROMPTS_PER_CLIP]
        return {"audio": clip.audio, "prompt": prompt, "text": text, "task": task}


class ManifestDataset(Dataset):
    """Rows of a JSONL/CSV manifest, decoded, resampled and cut to the encoder's clip.

    Item ``i`` (or a repeated draw ``copy * len + i``, see :mod:`pengi_kit.data.sampler`)
    depends only on ``(seed, stream, epoch, copy, i)``: any worker computes the same
    crop. Bad manifest lines are in ``load_errors`` (``on_error="skip"``) or raise
    (``"fail"``); a clip that cannot be loaded becomes ``{"error": "<one line>"}``.
    ``task`` and ``templates`` choose the dataset's prompts (see :func:`read_manifest`).
    """

    def __init__(self, path: str | Path, sample_rate: int, clip_seconds: float | None,
                 crop: str, seed: int = 0, on_error: str = "skip", *, task: str | None = None,
                 templates: dict[str, str] | None = None, max_seconds: float = 3600.0, stream: int = 0) -> None:
        from pengi_kit.data.manifest import read_manifest

        self.examples, self.load_errors = read_manifest(Path(path), on_error=on_error, task=task,
                                                        templates=templates)
        self.sample_rate, self.clip_seconds, self.crop, self.seed = sample_rate, clip_seconds, crop, seed
        self.max_seconds, self.stream = max_seconds, stream
        self.epoch = 0

    @property
    def manifest_errors(self) -> list[str]:
        return self.load_errors

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def text_lengths(self) -> np.ndarray:
        """Characters of each target text, for batching texts of similar length."""
        return np.array([len(ex.text) for ex in self.examples], dtype=np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from pengi_kit.data.audio import load_audio

        copy, index = divmod(index, len(self.examples))
        ex = self.examples[index]
        rng = np.random.default_rng([self.seed, self.stream, self.epoch, copy, index])
        try:
            audio = load_audio(ex.audio, self.sample_rate, start=ex.start, end=ex.end, max_seconds=self.max_seconds,
                               clip_seconds=self.clip_seconds or None, crop=self.crop, rng=rng)
        except PengiKitError as exc:
            return {"error": f"{ex.source}:{ex.line}: {exc}"}
        return {"audio": audio, "prompt": ex.prompt, "text": ex.text, "task": ex.task or ""}


class MixtureDataset(Dataset):
    """Several datasets drawn with weights: the index space is their concatenation.

    ``sizes`` and ``weights`` drive :class:`~pengi_kit.data.sampler.BucketBatchSampler`;
    a draw ``copy * len + i`` reaches source ``s`` as its own draw
    ``copy * len(s) + (i - offset[s])``.
    """

    def __init__(self, sources: list[Dataset], weights: list[float]) -> None:
        self.sources, self.weights = sources, list(weights)
        self.sizes = [len(s) for s in sources]  # type: ignore[arg-type]
        self.offsets = np.cumsum([0, *self.sizes])
        self.total = int(self.offsets[-1])

    @property
    def load_errors(self) -> list[str]:
        return [e for s in self.sources for e in getattr(s, "load_errors", [])]

    def set_epoch(self, epoch: int) -> None:
        for source in self.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)

    def __len__(self) -> int:
        return self.total

    def text_lengths(self) -> np.ndarray | None:
        parts = [s.text_lengths() if hasattr(s, "text_lengths") else None for s in self.sources]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    def __getitem__(self, draw: int) -> dict[str, Any]:
        copy, index = divmod(draw, self.total)
        s = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[s][copy * self.sizes[s] + index - int(self.offsets[s])]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Drop error items (their messages go to ``errors``) and zero-pad audio per batch."""
    good = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {
        "errors": [it["error"] for it in items if "error" in it],
        "prompts": [it["prompt"] for it in good],
        "texts": [it["text"] for it in good],
        "tasks": [it["task"] for it in good],
    }
    if good:
        length = max(len(it["audio"]) for it in good)
        audio = np.zeros((len(good), length), dtype=np.float32)
        for i, it in enumerate(good):
            audio[i, : len(it["audio"])] = it["audio"]
        batch["audio"] = torch.from_numpy(audio)  # padded to the longest clip of this batch only
        batch["audio_lengths"] = torch.tensor([len(it["audio"]) for it in good])
    return batch


def synthetic_corpus(recipe: dict[str, Any], split: str, sample_rate: int,
                     clip_seconds: float | None) -> SyntheticCorpus:
    """The synthetic split a recipe describes; train and valid clips are disjoint."""
    seed = recipe["seed"] + (0 if split == "train" else 10_000_019)
    return SyntheticCorpus(recipe["data"][f"synthetic_{split}_size"], seed, sample_rate, clip_seconds or 2.0)


def sources(recipe: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """``data.train`` / ``data.valid`` as a list of ``{"manifest", "weight", ...}`` tables."""
    source = recipe["data"][split]
    if isinstance(source, str):
        return [{"manifest": source, "weight": 1.0}] if source else []
    return [dict(entry) for entry in source]


def build_dataset(recipe: dict[str, Any], split: str, sample_rate: int,
                  clip_seconds: float | None) -> Dataset | IterableDataset | None:
    """The train or valid dataset a recipe names; None when it names none.

    A source is ``"synthetic"``, a JSONL/CSV manifest, or (alone) a shard pattern or
    folder, which streams. Several sources make a :class:`MixtureDataset` (for
    ``valid``, weights are ignored: every example is scored once).
    """
    from pengi_kit.data.shards import ShardDataset, is_shard_source

    data = recipe["data"]
    entries = sources(recipe, split)
    if not entries:
        return None
    crop = data["train_crop"] if split == "train" else data["eval_crop"]
    built: list[Dataset] = []
    for stream, entry in enumerate(entries):
        name = entry["manifest"]
        if name == "synthetic":
            built.append(SyntheticDataset(synthetic_corpus(recipe, split, sample_rate, clip_seconds)))
        elif is_shard_source(name):
            if len(entries) > 1 or entry.get("weight", 1.0) != 1.0:
                raise RecipeError(f"data.{split}: shards '{name}' stream and cannot be mixed with weights "
                                    "(shard each corpus into one set, or mix manifests)")
            return ShardDataset(name, sample_rate, clip_seconds, crop, recipe["seed"],
                                max_seconds=data["max_seconds"])
        else:
            built.append(ManifestDataset(name, sample_rate, clip_seconds, crop, recipe["seed"], data["on_error"],
                                         task=entry.get("task"), templates=entry.get("templates"),
                                         max_seconds=data["max_seconds"], stream=stream))
    if len(built) == 1 and entries[0].get("weight", 1.0) == 1.0:
        return built[0]
    weights = [e.get("weight", 1.0) if split == "train" else 1.0 for e in entries]
    return MixtureDataset(built, weights)
