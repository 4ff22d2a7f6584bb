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
    """Drop error items (their messages go to ``errors``) and zero-pad audio per batch.

    A batch with a conversation (an item with ``messages`` and its clips in ``audios``, see
    :class:`~pengi_kit.data.dataset.ConversationDataset`) holds ``conversations``, every row as one
    (Pengi's rows as one turn each), and all their clips in ``audio``, one after another."""
    good = [it for it in items if "error" not in it]
    if any("messages" in it for it in good):
        return _conversations(good, [it["error"] for it in items if "error" in it])
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
        batch.update(_stack([it["audio"] for it in good]))
    return batch


def _stack(clips: list[np.ndarray]) -> dict[str, torch.Tensor]:
    length = max(len(c) for c in clips)
    audio = np.zeros((len(clips), length), dtype=np.float32)
    for i, clip in enumerate(clips):
        audio[i, : len(clip)] = clip
    # padded to the longest clip of this batch only
    return {"audio": torch.from_numpy(audio), "audio_lengths": torch.tensor([len(c) for c in clips])}


def _conversations(items: list[dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    from pengi_kit.data.conversations import single_turn

    rows = [it if "messages" in it else {**it, "messages": single_turn(it["prompt"], it["text"]),
                                         "audios": [it["audio"]], "clips": [it.get("clip", f"row:{id(it)}")]}
            for it in items]
    batch: dict[str, Any] = {"errors": errors, "conversations": [r["messages"] for r in rows],
                             "prompts": [r["prompt"] for r in rows], "texts": [r["text"] for r in rows],
                             "tasks": [r["task"] for r in rows], "clips": [c for r in rows for c in r["clips"]]}
    clips = [clip for r in rows for clip in r["audios"]]
    empty = {"audio": torch.zeros(0, 1), "audio_lengths": torch.zeros(0, dtype=torch.long)}  # text-only rows
    return {**batch, **(_stack(clips) if clips else empty)}
