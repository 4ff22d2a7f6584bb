"""Scores for the non-captioning tasks: answer matching, accuracy, mAP and retrieval.

All are plain functions of predictions (or score matrices) and references, so they can
be checked by hand; :mod:`pengi_kit.evaluation.tasks` feeds them from a model.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch

__all__ = ["normalize_answer", "answer_correct", "agreed_answers", "word_similarity", "average_precision", "mean_average_precision",
           "accuracy", "retrieval_scores"]

_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_PUNCT = re.compile(f"[{re.escape(string.punctuation.replace(chr(39), ''))}]")


def normalize_answer(text: str) -> str:
    """The usual AQA/VQA normalisation: lowercase, punctuation to spaces (apostrophes are
    dropped), articles removed, number words as digits, whitespace collapsed.
    ``"Yes, there are Two dogs."`` -> ``"yes there are 2 dogs"``."""
    words = _PUNCT.sub(" ", text.lower()).replace("'", "").split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def answer_correct(prediction: str, references: Sequence[str]) -> bool:
    """Whether ``prediction`` matches any reference after :func:`normalize_answer`.

    When the references are yes/no answers, the prediction's first word decides, so
    ``"yes, a dog barks"`` answers ``"yes"`` correctly."""
    pred = normalize_answer(prediction)
    refs = {normalize_answer(r) for r in references}
    if refs and refs <= {"yes", "no"}:
        pred = pred.split(" ", 1)[0]
    return pred in refs


def agreed_answers(references: Sequence[str]) -> dict[str, list[str]]:
    """The references a question is scored against under each agreement rule, as the Clotho-AQA
    splits define them: ``any`` (every annotator's answer), ``majority`` (the answer more than
    half gave; absent when none did) and ``unanimous`` (the answer all gave; absent otherwise).
    Answers are compared after :func:`normalize_answer`."""
    counts = Counter(normalize_answer(r) for r in references)
    out = {"any": list(references)}
    if references:
        top, n = counts.most_common(1)[0]
        if n * 2 > len(references):
            out["majority"] = [next(r for r in references if normalize_answer(r) == top)]
            if n == len(references):
                out["unanimous"] = out["majority"]
    return out


def word_similarity(a: str, b: str) -> float:
    """F1 overlap of the normalised words of two texts (1.0 for equal texts): the
    text matcher for models without a text encoder."""
    wa, wb = normalize_answer(a).split(), normalize_answer(b).split()
    if not wa or not wb:
        return float(wa == wb)
    common = sum(min(wa.count(w), wb.count(w)) for w in set(wa))
    return 2 * common / (len(wa) + len(wb))


def average_precision(scores: torch.Tensor, relevant: torch.Tensor) -> float:
    """Area under the precision-recall curve, tied scores as one threshold (as
    scikit-learn's ``average_precision_score``). NaN when nothing is relevant."""
    scores, relevant = scores.double(), relevant.bool()
    positives = int(relevant.sum())
    if positives == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, hits = scores[order], relevant[order].double()
    last = torch.ones_like(scores, dtype=torch.bool)  # the last item of each run of tied scores
    last[:-1] = scores[1:] != scores[:-1]
    tp = torch.cumsum(hits, 0)[last]
    seen = (torch.arange(len(scores), dtype=torch.float64) + 1)[last]
    recall_step = torch.diff(tp, prepend=tp.new_zeros(1)) / positives
    return float((recall_step * tp / seen).sum())


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro mAP over classes (columns) of a (clips, classes) score matrix; classes with no
    positive clip are left out, as AudioSet/FSD50K evaluations do."""
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1]) if labels[:, c].any()]
    if not aps:
        raise ValueError("no class has a positive example")
    return sum(aps) / len(aps)


def accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of a (clips, classes) score matrix against class indices (first
    class wins a tie)."""
    return float((scores.argmax(dim=1) == targets).double().mean())


def retrieval_scores(similarity: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                     ap_at: int = 10) -> dict[str, float]:
    """Recall@k and mAP@``ap_at`` of (queries, items) similarities.

    R@k: share of queries with a relevant item in their top k. AP@n of one query: the mean,
    over the relevant items ranked within the top n, of the precision at their rank,
    divided by min(relevant items, n) (with one relevant item: 1/rank, or 0 below n).
    Ties are ranked by item order.
    """
    order = torch.argsort(similarity, dim=1, descending=True, stable=True)
    hits = torch.gather(relevant.bool(), 1, order).double()
    out = {f"R@{k}": float((hits[:, :k].sum(1) > 0).double().mean()) for k in ks}
    top = hits[:, :ap_at]
    precision = torch.cumsum(top, 1) / torch.arange(1, top.shape[1] + 1, dtype=torch.float64)
    denominator = relevant.sum(1).clamp(max=ap_at).double()
    out[f"mAP@{ap_at}"] = float(((precision * top).sum(1) / denominator).mean())
    return out
