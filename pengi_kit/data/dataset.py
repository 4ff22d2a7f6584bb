"""Map-style datasets of (audio, prompt, target) examples.

Items are dicts ``{"audio": float32 (T,), "prompt", "text", "task"}``, or
``{"error": "<one line>"}`` for an example that could not be loaded
(:mod:`pengi_kit.data.collate` batches both). Tokenisation happens in the main
process, so workers never carry the model. Every dataset answers the
:class:`~pengi_kit.data.base.PengiDataset` questions (load errors, text lengths,
epoch); :mod:`pengi_kit.data.build` picks the datasets a recipe names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pengi_kit.data.augment import Augment, augment, draw_epoch
from pengi_kit.data.base import PengiDataset
from pengi_kit.data.collate import clip_key
from pengi_kit.data.synthetic import PROMPTS_PER_CLIP, SyntheticCorpus
from pengi_kit.errors import PengiKitError

__all__ = ["ConversationDataset", "ManifestDataset", "MixtureDataset", "SyntheticDataset", "seconds_of"]


def seconds_of(path: Any, start: float | None = None, end: float | None = None,
               clip_seconds: float | None = None) -> float:
    """Seconds of a file (or of its ``[start, end)`` segment) from its header, cut to ``clip_seconds``
    (a clip the encoder repeat-pads to it counts it whole); 0 for a file that cannot be opened (its
    rows are reported when they load)."""
    from pengi_kit.data.audio import audio_info

    if clip_seconds:
        return float(clip_seconds)
    try:
        info = audio_info(path)
    except PengiKitError:
        return 0.0
    length = info["frames"] / info["rate"]
    return max(0.0, min(length, end if end is not None else length) - (start or 0.0))


class SyntheticDataset(PengiDataset, Dataset):
    """The examples of a synthetic corpus for the recipe's ``task``.

    ``"pengi"``: every clip with each of its prompts. Encoder pretraining sees each clip
    once per epoch and none of the questions: ``"tagging"``, the primary kind as ``text``
    and every kind it holds as ``labels`` (multi-label tags); ``"contrastive"``, one of
    the clip's descriptions (:meth:`~pengi_kit.data.synthetic.Clip.descriptions`), the
    other one the next epoch, as CLAP training draws one of a clip's captions.
    """

    def __init__(self, corpus: SyntheticCorpus, task: str = "pengi", augment: Augment | None = None) -> None:
        if task not in ("pengi", "tagging", "contrastive"):
            raise ValueError(f"unknown task {task!r}")
        self.corpus, self.task, self.epoch, self.augment = corpus, task, 0, augment
        self.per_clip = PROMPTS_PER_CLIP if task == "pengi" else 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = draw_epoch(self.augment, epoch)

    def durations(self) -> np.ndarray:
        return np.full(len(self), self.corpus.clip_seconds)

    def __len__(self) -> int:
        return self.per_clip * len(self.corpus)

    def __getitem__(self, index: int) -> dict[str, Any]:
        copy, index = divmod(index, len(self))  # a repeated draw (weight > 1): the same example
        clip = self.corpus.clip(index // self.per_clip)
        key = f"synthetic:{self.corpus.seed}:{index // self.per_clip}"
        audio = clip.audio
        if self.augment is not None:
            rng = np.random.default_rng([self.corpus.seed, self.epoch, copy, index, 1])
            audio = augment(audio, self.corpus.sample_rate, self.augment, rng, len(audio))
        if self.task == "tagging":
            return {"audio": audio, "prompt": "", "text": clip.primary, "task": "tagging", "labels": clip.labels,
                    "clip": key}
        if self.task == "contrastive":
            texts = clip.descriptions()
            return {"audio": audio, "prompt": "", "text": texts[(index + self.epoch) % len(texts)],
                    "task": "contrastive", "clip": key}
        task, prompt, text = clip.examples()[index % PROMPTS_PER_CLIP]
        return {"audio": audio, "prompt": prompt, "text": text, "task": task, "clip": key}


class _Clips(PengiDataset, Dataset):
    """What the datasets of rows in a file share: how their clips are loaded (the encoder's rate
    and clip, the crop, the longest clip, augmentation) and the epoch their draws come from."""

    def __init__(self, sample_rate: int, clip_seconds: float | None, crop: str, seed: int, max_seconds: float,
                 stream: int, augment: Augment | None) -> None:
        self.sample_rate, self.clip_seconds, self.crop, self.seed = sample_rate, clip_seconds, crop, seed
        self.max_seconds, self.stream, self.augment = max_seconds, stream, augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = draw_epoch(self.augment, epoch)


class ManifestDataset(_Clips):
    """Rows of a JSONL/CSV manifest, decoded, resampled and cut to the encoder's clip.

    Item ``i`` (or a repeated draw ``copy * len + i``, see :mod:`pengi_kit.data.sampler`)
    depends only on ``(seed, stream, epoch, copy, i)``: any worker computes the same
    crop. Bad manifest lines are in ``load_errors`` (``on_error="skip"``) or raise
    (``"fail"``); a clip that cannot be loaded becomes ``{"error": "<one line>"}``.
    ``task``, ``templates`` and ``prompt`` choose the dataset's prompts (see :func:`read_manifest`).
    """

    def __init__(self, path: str | Path, sample_rate: int, clip_seconds: float | None,
                 crop: str, seed: int = 0, on_error: str = "skip", *, task: str | None = None,
                 templates: dict[str, str] | None = None, prompt: str | None = None, max_seconds: float = 3600.0,
                 stream: int = 0, augment: Augment | None = None) -> None:
        from pengi_kit.data.manifest import read_manifest

        self.examples, self.load_errors = read_manifest(Path(path), on_error=on_error, task=task,
                                                        templates=templates, prompt=prompt)
        super().__init__(sample_rate, clip_seconds, crop, seed, max_seconds, stream, augment)

    def __len__(self) -> int:
        return len(self.examples)

    def text_lengths(self) -> np.ndarray:
        """Characters of each target text, for batching texts of similar length."""
        return np.array([len(ex.text) for ex in self.examples], dtype=np.int64)

    def durations(self) -> np.ndarray:
        return np.array([seconds_of(ex.audio, ex.start, ex.end, self.clip_seconds) for ex in self.examples])

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
        if self.augment is not None:
            audio = augment(audio, self.sample_rate, self.augment,
                            np.random.default_rng([self.seed, self.stream, self.epoch, copy, index, 1]),
                            len(audio) if self.clip_seconds else None)
        return {"audio": audio, "prompt": ex.prompt, "text": ex.text, "task": ex.task or "",
                "clip": clip_key(ex.audio, ex.start, ex.end)}


class ConversationDataset(_Clips):
    """Conversations with audio (:mod:`pengi_kit.data.conversations`) for the chat layout: item
    ``{"messages", "audios": [float32 (T,), ...], "clips": [key, ...], "text": the answers}``, each
    clip loaded, cut and augmented as a manifest's (a clip's draw depends on its place in the row
    too); a clip that cannot be loaded makes the row ``{"error": "<file:line: one line>"}``."""

    def __init__(self, path: str | Path, sample_rate: int, clip_seconds: float | None, crop: str, seed: int = 0,
                 on_error: str = "skip", *, format: str | None = None, max_seconds: float = 3600.0, stream: int = 0,
                 augment: Augment | None = None) -> None:
        from pengi_kit.data.conversations import read_conversations

        self.rows, self.load_errors = read_conversations(path, on_error, format=format)
        super().__init__(sample_rate, clip_seconds, crop, seed, max_seconds, stream, augment)

    def __len__(self) -> int:
        return len(self.rows)

    def vet(self, check: Any) -> None:
        kept = []
        for row in self.rows:
            reason = check(row.as_messages())
            if reason is None:
                kept.append(row)
            else:
                self.load_errors.append(f"{row.where}: {reason}")
        self.rows = kept

    def durations(self) -> np.ndarray:
        """Seconds of each conversation's clips together (a clip held in the file: the encoder's clip,
        or 10 s)."""
        from pengi_kit.data.conversations import InlineAudio

        return np.array([sum(self.clip_seconds or 10.0 if isinstance(clip, InlineAudio) else
                             seconds_of(clip, clip_seconds=self.clip_seconds) for clip in row.audios)
                         for row in self.rows])

    def text_lengths(self) -> np.ndarray:
        """Characters of each conversation's text."""
        return np.array([sum(len(c) for _, c in row.messages) for row in self.rows], dtype=np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import hashlib
        import io

        from pengi_kit.data.audio import load_audio
        from pengi_kit.data.conversations import InlineAudio

        copy, index = divmod(index, len(self.rows))
        row = self.rows[index]
        audios, keys = [], []
        for n, clip in enumerate(row.audios):
            seed = [self.seed, self.stream, self.epoch, copy, index, n]
            inline = isinstance(clip, InlineAudio)
            source = io.BytesIO(clip.data) if inline else clip
            try:
                audio = load_audio(source, self.sample_rate, max_seconds=self.max_seconds, clip_seconds=self.clip_seconds
                                   or None, crop=self.crop, rng=np.random.default_rng(seed),
                                   name=f"clip {n + 1} ({clip.format})" if inline else None)
            except PengiKitError as exc:
                return {"error": f"{row.where}: {exc}"}
            if self.augment is not None:
                audio = augment(audio, self.sample_rate, self.augment, np.random.default_rng([*seed, 1]),
                                len(audio) if self.clip_seconds else None)
            audios.append(audio)
            keys.append(clip_key(f"inline:{hashlib.blake2b(clip.data, digest_size=8).hexdigest()}" if inline else clip))
        return {"messages": row.as_messages(), "audios": audios, "clips": keys, "prompt": "",
                "text": " ".join(row.answers()), "task": "chat"}


class MixtureDataset(PengiDataset, Dataset):
    """Several datasets drawn with weights: the index space is their concatenation.

    ``sizes`` and ``weights`` drive :class:`~pengi_kit.data.sampler.BucketBatchSampler`;
    a draw ``copy * len + i`` reaches source ``s`` as its own draw
    ``copy * len(s) + (i - offset[s])``.
    """

    def __init__(self, sources: list[PengiDataset], weights: list[float]) -> None:
        self.sources, self.weights = sources, list(weights)
        self._index()

    def _index(self) -> None:
        self.sizes = [s.num_examples() for s in self.sources]
        self.offsets = np.cumsum([0, *self.sizes])
        self.total = int(self.offsets[-1])

    def vet(self, check: Any) -> None:
        for source in self.sources:
            source.vet(check)
        self._index()

    @property
    def load_errors(self) -> list[str]:  # type: ignore[override]
        return [e for s in self.sources for e in s.load_errors]

    def mixture(self) -> tuple[list[int], list[float]]:
        return self.sizes, self.weights

    def set_epoch(self, epoch: int) -> None:
        for source in self.sources:
            source.set_epoch(epoch)

    def __len__(self) -> int:
        return self.total

    def _joined(self, per_source: str) -> np.ndarray | None:
        """The sources' answers to ``per_source`` end to end; None where one of them does not know."""
        parts = [getattr(s, per_source)() for s in self.sources]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    def durations(self) -> np.ndarray | None:
        return self._joined("durations")

    def text_lengths(self) -> np.ndarray | None:
        return self._joined("text_lengths")

    def __getitem__(self, draw: int) -> dict[str, Any]:
        copy, index = divmod(draw, self.total)
        s = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[s][copy * self.sizes[s] + index - int(self.offsets[s])]
