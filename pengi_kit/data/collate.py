"""Items into batches: the one collate function of map-style loaders and shard streams.

An item is ``{"audio": float32 (T,), "prompt", "text", "task", "clip"}`` (``clip``: which
recording and segment it is, :func:`clip_key`; and ``"labels"``, a list of tags, where the
dataset knows them apart from the text), or ``{"error": "<one line>"}``
for an example that could not be loaded. Errors leave the batch but not silently: their
messages travel in ``batch["errors"]`` to the trainer, which reports them
(``data.on_error = "skip"``) or stops (``"fail"``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["clip_key", "collate"]


def clip_key(audio: Any, start: float | None = None, end: float | None = None) -> str:
    """Names a recording and segment: rows of one clip (several prompts or captions) share it,
    and the listening check never pairs them (:mod:`pengi_kit.models.listening`)."""
    return f"{audio}#{'' if start is None else start}-{'' if end is None else end}"


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Drop error items (their messages go to ``errors``) and zero-pad audio per batch."""
    good = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {
        "errors": [it["error"] for it in items if "error" in it],
        "prompts": [it["prompt"] for it in good],
        "texts": [it["text"] for it in good],
        "tasks": [it["task"] for it in good],
        "clips": [it.get("clip", f"row:{id(it)}") for it in good],  # an item without a name is its own clip
    }
    if any("labels" in it for it in good):  # tags of a dataset that knows them (None: read them from text)
        batch["labels"] = [it.get("labels") for it in good]
    if good:
        length = max(len(it["audio"]) for it in good)
        audio = np.zeros((len(good), length), dtype=np.float32)
        for i, it in enumerate(good):
            audio[i, : len(it["audio"])] = it["audio"]
        batch["audio"] = torch.from_numpy(audio)  # padded to the longest clip of this batch only
        batch["audio_lengths"] = torch.tensor([len(it["audio"]) for it in good])
    return batch
