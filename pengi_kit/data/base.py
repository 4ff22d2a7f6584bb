"""What the trainer and the loaders ask of a dataset, in one small base class.

Every dataset of pengi-kit derives from :class:`PengiDataset` beside torch's
``Dataset`` or ``IterableDataset``, so callers call these methods instead of probing
for attributes. The defaults fit a plain map-style dataset; a dataset overrides what
it knows better (a manifest has load errors and cheap text lengths, a mixture has
several weighted sources, a shard stream counts its examples without a length).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["PengiDataset"]


class PengiDataset:
    """The questions the trainer and the loaders ask of every dataset; see the module docstring."""

    # problems found while opening the data (bad manifest lines, unreadable shards), one line
    # each: the trainer reports them like clips that fail to load
    load_errors: Sequence[str] = ()

    def num_examples(self) -> int:
        """Examples in one pass over the data: the length of a map-style dataset (streams have none
        and override this)."""
        return len(self)  # type: ignore[arg-type]

    def mixture(self) -> tuple[list[int], list[float]]:
        """Sizes of the sources drawn from and their weights
        (:class:`~pengi_kit.data.sampler.BucketBatchSampler`); one source of weight 1 by default."""
        return [self.num_examples()], [1.0]

    def text_lengths(self) -> np.ndarray | None:
        """Characters of each target text, for batching texts of similar length; None where that is
        not cheap to know (batches are then not bucketed)."""
        return None

    def durations(self) -> np.ndarray | None:
        """Seconds of audio of each example (a conversation: all its clips), as the loader will give
        them (cut to the encoder's clip), for batching by duration; None where that is not cheap
        to know."""
        return None

    def vet(self, check: Callable[[list[dict[str, str]]], str | None]) -> None:
        """Leave out the conversations ``check`` refuses (it returns why), each reported in
        ``load_errors``: rows a model cannot read, found before training rather than in it.
        Nothing to do for data without conversations known ahead."""

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops (and shuffles) of ``epoch`` from now on; nothing to do for data without any."""
