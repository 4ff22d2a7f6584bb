"""Datasets of (audio, prompt, target) examples and their collation.

Items are dicts ``{"audio": float32 (T,), "prompt", "text", "task"}``, or
``{"error": "<one line>"}`` for an example that could not be loaded: the collator
drops those from the batch and hands the messages to the trainer, which reports them
(``data.on_error = "skip"``) or stops (``"fail"``). Nothing is dropped silently.
Tokenisation happens in the main process, so workers never carry the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pengi_kit.data.synthetic import PROMPTS_PER_CLIP, SyntheticCorpus
from pengi_kit.errors import PengiKitError


class SyntheticDataset(Dataset):
    """Every clip of a synthetic corpus with each of its prompts."""

    def __init__(self, corpus: SyntheticCorpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return PROMPTS_PER_CLIP * len(self.corpus)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.corpus.clip(index // PROMPTS_PER_CLIP)
        task, prompt, text = clip.examples()[index % PROMPTS_PER_CLIP]
        return {"audio": clip.audio, "prompt": prompt, "text": text, "task": task}


class ManifestDataset(Dataset):
    """Rows of a JSONL/CSV manifest, decoded, resampled and cut to the encoder's clip."""

    def __init__(self, path: str | Path, sample_rate: int, clip_seconds: float | None,
                 crop: str, seed: int = 0, on_error: str = "skip") -> None:
        from pengi_kit.data.manifest import read_manifest

        self.examples, self.manifest_errors = read_manifest(Path(path), on_error=on_error)
        self.sample_rate, self.clip_seconds, self.crop, self.seed = sample_rate, clip_seconds, crop, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from pengi_kit.data.audio import fit_length, load_audio

        ex = self.examples[index]
        try:
            audio = load_audio(ex.audio, self.sample_rate, start=ex.start, end=ex.end)
        except PengiKitError as exc:
            return {"error": f"{ex.source}:{ex.line}: {exc}"}
        if self.clip_seconds:
            rng = np.random.default_rng([self.seed, self.epoch, index])  # same crop for any worker count
            audio = fit_length(audio, int(round(self.clip_seconds * self.sample_rate)), self.crop, rng)
        return {"audio": audio, "prompt": ex.prompt, "text": ex.text, "task": ex.task or ""}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
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
        batch["audio"] = torch.from_numpy(audio)
    return batch


def synthetic_corpus(recipe: dict[str, Any], split: str, sample_rate: int,
                     clip_seconds: float | None) -> SyntheticCorpus:
    """The synthetic split a recipe describes; train and valid clips are disjoint."""
    seed = recipe["seed"] + (0 if split == "train" else 10_000_019)
    return SyntheticCorpus(recipe["data"][f"synthetic_{split}_size"], seed, sample_rate, clip_seconds or 2.0)


def build_dataset(recipe: dict[str, Any], split: str, sample_rate: int,
                  clip_seconds: float | None) -> Dataset | None:
    """The train or valid dataset a recipe names; None when it names none."""
    data = recipe["data"]
    source = data[split]
    if not source:
        return None
    if source == "synthetic":
        return SyntheticDataset(synthetic_corpus(recipe, split, sample_rate, clip_seconds))
    crop = data["train_crop"] if split == "train" else data["eval_crop"]
    return ManifestDataset(source, sample_rate, clip_seconds, crop, recipe["seed"], data["on_error"])
