"""The listening check (docs/training.md): does a model use its audio?

Each row's reference answer is scored twice: given its own clip, and given another clip's
audio (same prompt, same answer). A model that ignores its audio scores both alike; one that
listens finds its references less likely with the wrong audio. The difference, in nats per
token, is ``listening``. Training logs it at every validation
(:meth:`pengi_kit.models.pengi.PengiModel.validation_sums`) and ``pengi-kit evaluate --task
listening`` reports it on a test set (:meth:`pengi_kit.api.Pengi.listening`); both go through
:func:`swapped_sums` with partners from :func:`partners`.
"""
from __future__ import annotations

from typing import Any, Hashable, Sequence

import torch

#: A model whose loss on its references rises by less than this many nats per token when each
#: clip's audio is swapped for another clip's does not use its audio. A model that tells apart
#: even two equally likely answers from the audio gains ln 2 = 0.69 nats on that token, 0.05 or
#: more per token over a target of up to ~14 tokens; rounding (bf16) moves the difference by
#: about 0.001.
LISTENING_THRESHOLD = 0.05

__all__ = ["LISTENING_THRESHOLD", "listening_warning", "partners", "swapped_sums"]


def listening_warning(listening: float, what: str = "validation loss") -> str | None:
    """The one-line warning for a listening check below :data:`LISTENING_THRESHOLD`, else None."""
    if not listening < LISTENING_THRESHOLD:  # NaN (nothing to compare): no warning
        return None
    return (f"pengi-kit: the model is not listening: its {what} changes by only {listening:.4f} "
            f"nats/token when clips' audio is swapped (below {LISTENING_THRESHOLD}); it answers from the "
            "prompt and the texts alone. Use a pretrained audio encoder (pengi-kit import, or pretrain one on "
            "your data) and/or unfreeze it, train longer, or check that the texts depend on the audio; "
            "see docs/training.md, 'The listening check'")


def partners(clips: Sequence[Hashable]) -> list[int]:
    """For each row, the row whose audio replaces its own: the first row after it (cyclically)
    of another clip; ``-1`` where every row is of the same clip. ``clips`` names each row's clip
    (rows of one clip with several prompts or answers share a name)."""
    order = list(dict.fromkeys(clips))  # distinct clips, in order of first appearance
    if len(order) < 2:
        return [-1] * len(clips)
    first = {clip: clips.index(clip) for clip in order}
    following = dict(zip(order, order[1:] + order[:1]))
    return [first[following[clip]] for clip in clips]


def swapped_sums(score: Any, audio: torch.Tensor, swapped: torch.Tensor, keep: torch.Tensor | None = None,
                 own: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """float64 ``[own loss, swapped loss, tokens]`` summed over the rows ``keep`` marks (all by default).

    ``score(audio_rows)`` gives the per-row negative log-likelihood sums (B,) and token counts
    (B,) of the rows' references when row i hears ``audio_rows[i]``; ``audio`` holds each row's
    own audio representation (a prefix, an embedding), ``swapped`` its partner's
    (:func:`partners`); ``own``: ``score(audio)`` where the caller has it already."""
    own_loss, tokens = own if own is not None else score(audio)
    swapped_loss, _ = score(swapped)
    keep = torch.ones_like(tokens, dtype=torch.bool) if keep is None else keep
    return torch.stack([own_loss[keep].double().sum(), swapped_loss[keep].double().sum(),
                        tokens[keep].double().sum()])
