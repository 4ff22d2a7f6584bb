"""The listening check (docs/training.md): does a model use its audio?

Each row's reference answer is scored twice: given its own clip, and given another clip's
audio (same prompt, same answer). A model that ignores its audio scores both alike; one that
listens finds its references less likely with the wrong audio. The difference is reported
in nats per answer (``listening``: summed over the answer's tokens, end-of-text included),
in nats per token beside it (``listening_per_token``), and over the pairs whose answers
differ (``listening_differing``: where answers are labels, a pair of the same label cannot
tell). For a model that tells K balanced classes apart from its audio, ``listening`` is at
least about ln K (a floor, not a target: a confident model scores well above it); for a
model that ignores its audio, about 0.

Partners are honest by construction (:func:`partners`): a row is never paired with itself or
with another row of the same recording and segment (the several captions of one clip), and
the pairing follows a seeded random order, not the order of the manifest (which often lists
a clip's rows, or a class's clips, next to each other). Training logs the check at every
validation over a validation set the loader visits in that seeded order
(:meth:`pengi_kit.models.pengi.PengiModel.validation_sums`), and ``pengi-kit evaluate --task
listening`` reports it on a test set (:meth:`pengi_kit.api.Pengi.listening`); both go
through :func:`partners` and :func:`listening_sums`.
"""
from __future__ import annotations

import random
from typing import Hashable, Sequence

import torch

#: A model whose answers become less likely by less than this many nats each, when each clip's
#: audio is swapped for another clip's, does not use its audio. Telling apart even two equally
#: likely answers from the audio gains ln 2 = 0.69 nats per answer.
LISTENING_THRESHOLD = 0.1

__all__ = ["LISTENING_THRESHOLD", "listening_sums", "listening_warning", "partners"]


def listening_warning(listening: float, what: str = "validation loss") -> str | None:
    """The one-line warning for a listening check below :data:`LISTENING_THRESHOLD`, else None."""
    if not listening < LISTENING_THRESHOLD:  # NaN (nothing to compare): no warning
        return None
    return (f"pengi-kit: the model is not listening: its {what} changes by only {listening:.4f} "
            f"nats per answer when clips' audio is swapped (below {LISTENING_THRESHOLD}); it answers from the "
            "prompt and the texts alone. Use a pretrained audio encoder (pengi-kit import, or pretrain one on "
            "your data) and/or unfreeze it, train longer, or check that the texts depend on the audio; "
            "see docs/training.md, 'The listening check'")


def partners(clips: Sequence[Hashable], seed: int = 0) -> list[int]:
    """For each row, the row whose audio replaces its own: the rows are put in a random order
    drawn from ``seed``, and each takes the first row after it in that order (cyclically) that
    is of another clip; ``-1`` where every row is of one clip. ``clips`` names each row's
    recording and segment (:func:`pengi_kit.data.collate.clip_key`)."""
    n = len(clips)
    if len(set(clips)) < 2:
        return [-1] * n
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = [-1] * n
    for at, row in enumerate(order):
        step = 1
        while clips[order[(at + step) % n]] == clips[row]:
            step += 1
        out[row] = order[(at + step) % n]
    return out


def listening_sums(own: torch.Tensor, swapped: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor,
                   differ: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{metric: float64 [sum, count]}`` over the rows ``keep`` marks, from each row's negative
    log-likelihood of its answer with its own audio (``own``) and its partner's (``swapped``),
    its answer's tokens, and whether its partner's answer ``differ``s from its own."""
    gain, own, swapped, tokens = ((x.double() * keep) for x in (swapped - own, own, swapped, tokens.double()))
    differing = differ & keep
    return {"listening": torch.stack([gain.sum(), keep.double().sum()]),
            "listening_per_token": torch.stack([gain.sum(), tokens.sum()]),
            "listening_differing": torch.stack([(gain * differing).sum(), differing.double().sum()]),
            "valid_loss_shuffled": torch.stack([swapped.sum(), tokens.sum()])}
