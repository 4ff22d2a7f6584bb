"""The train and valid datasets a recipe names.

Kept apart from the dataset classes so that neither :mod:`pengi_kit.data.dataset` nor
:mod:`pengi_kit.data.shards` needs the other: this module is the one place that knows
every kind of source.
"""
from __future__ import annotations

from typing import Any

from pengi_kit.data.augment import Augment
from pengi_kit.data.base import PengiDataset
from pengi_kit.data.conversations import is_conversation_file
from pengi_kit.data.hf import HFDataset, HFStream, is_hf_source
from pengi_kit.data.dataset import ConversationDataset, ManifestDataset, MixtureDataset, SyntheticDataset
from pengi_kit.data.shards import ShardDataset, holds_conversations, is_shard_source
from pengi_kit.data.synthetic import SyntheticCorpus
from pengi_kit.errors import RecipeError

__all__ = ["build_dataset", "sources", "synthetic_corpus"]


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
                  clip_seconds: float | None) -> PengiDataset | None:
    """The train or valid dataset a recipe names; None when it names none.

    A source is ``"synthetic"``, a JSONL/CSV manifest, or (alone) a shard pattern or
    folder, which streams. Several sources make a :class:`MixtureDataset` (for
    ``valid``, weights are ignored: every example is scored once).
    """
    data = recipe["data"]
    entries = sources(recipe, split)
    if not entries:
        return None
    crop = data["train_crop"] if split == "train" else data["eval_crop"]
    task = recipe.get("task", "pengi")  # what the model trains: Pengi, or an encoder's pretraining
    augment = Augment(**data["augment"]) if split == "train" and data.get("augment") else None
    augment = augment if augment is not None and augment.active else None  # training clips only
    built: list[PengiDataset] = []
    for stream, entry in enumerate(entries):
        name = entry["manifest"]
        if name == "synthetic":
            built.append(SyntheticDataset(synthetic_corpus(recipe, split, sample_rate, clip_seconds), task, augment))
        elif is_hf_source(name):
            kind = HFStream if entry.get("streaming") else HFDataset
            if kind is HFStream and (len(entries) > 1 or entry.get("weight", 1.0) != 1.0):
                raise RecipeError(f"data.{split}: '{name}' streams and cannot be mixed with weights (mix "
                                  "datasets that are not streamed)")
            dataset = kind(name, sample_rate, clip_seconds, crop, recipe["seed"], columns=entry.get("columns"),
                           split=entry.get("split"), prompt=entry.get("prompt"),
                           chat=recipe["model"].get("layout") == "chat", max_seconds=data["max_seconds"],
                           stream=stream, augment=augment)
            if kind is HFStream:
                return dataset
            built.append(dataset)
        elif is_shard_source(name):
            baked = [key for key in ("prompt", "task", "templates") if key in entry]
            if baked:  # `data shard` wrote each row's prompt into the shards
                raise RecipeError(f"data.{split}: shards '{name}' hold their prompts already, so {baked[0]} "
                                  "cannot apply; remove it, or put the prompts in the manifest's rows before "
                                  "`pengi-kit data shard`")
            if len(entries) > 1 or entry.get("weight", 1.0) != 1.0:
                raise RecipeError(f"data.{split}: shards '{name}' stream and cannot be mixed with weights "
                                    "(shard each corpus into one set, or mix manifests)")
            if holds_conversations(name) and recipe["model"].get("layout") != "chat":
                raise RecipeError(f"data.{split}: shards '{name}' hold conversations, which the chat layout reads; "
                                  "set model.layout = \"chat\"")
            return ShardDataset(name, sample_rate, clip_seconds, crop, recipe["seed"],
                                max_seconds=data["max_seconds"], augment=augment)
        elif "format" in entry or is_conversation_file(name):
            if recipe["model"].get("layout") != "chat":
                raise RecipeError(f"data.{split}: '{name}' holds conversations, which the chat layout reads; set "
                                  "model.layout = \"chat\" (or give a manifest of audio, prompt and text rows)")
            built.append(ConversationDataset(name, sample_rate, clip_seconds, crop, recipe["seed"], data["on_error"],
                                             format=entry.get("format"), max_seconds=data["max_seconds"],
                                             stream=stream, augment=augment))
        else:
            built.append(ManifestDataset(name, sample_rate, clip_seconds, crop, recipe["seed"], data["on_error"],
                                         task=entry.get("task"), templates=entry.get("templates"),
                                         # encoder pretraining reads no prompt: rows need none
                                         prompt=entry.get("prompt", None if task == "pengi" else ""),
                                         max_seconds=data["max_seconds"], stream=stream, augment=augment))
    if len(built) == 1 and entries[0].get("weight", 1.0) == 1.0:
        return built[0]
    weights = [e.get("weight", 1.0) if split == "train" else 1.0 for e in entries]
    return MixtureDataset(built, weights)
