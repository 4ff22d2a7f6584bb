"""Captioning metrics matching the coco-caption reference implementations.

Pure-Python re-implementations of ``pycocoevalcap``'s ``Bleu`` (closest
reference length), ``Rouge`` (ROUGE-L, beta 1.2) and ``Cider`` (CIDEr-D), fed
by a Python stand-in for coco's PTB tokenisation step. Given the same tokens,
the numbers equal those of pycocoevalcap (checked in the tests to 1e-9).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

__all__ = ["PUNCTUATIONS", "ptb_tokenize", "tokenize", "bleu", "rouge_l", "cider_d", "caption_metrics"]

# The tokens pycocoevalcap/tokenizer/ptbtokenizer.py drops after tokenising.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
     ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

Tokens = list[str]


# Stanford PTBTokenizer (coco-caption runs 3.4.1 with -lowerCase) in Python: brackets
# become -lrb- ... (lowercase, so coco's punctuation filter keeps them), clitics and
# n't split off, punctuation split off unless inside a number, abbreviation or word.
_CLITIC = r"'(?:s|re|ve|d|ll|m)(?!\w)"
_TOKEN = re.compile(rf"""
    (?:[^\W\d_]\.)+(?!\w)                      # a.m.  u.s.  j.
  | \.{{3,}} | -{{2,}} | [!?]+                    # ...  --  ?!
  | \w+(?=n't(?!\w)) | n't(?!\w) | {_CLITIC}     # ca n't, man 's
  | @?\w+(?:(?:[-./&@]|(?<=\d)[,:](?=\d)|'(?!(?:s|re|ve|d|ll|m)(?!\w)))\w+)*   # words, 3.5, 2,000, o'clock
  | \S
""", re.VERBOSE)
_RENAME = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-", '"': "''"}
_SPLIT = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"],
          "gimme": ["gim", "me"], "lemme": ["lem", "me"]}
_ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr vs etc inc ltd co prof mt ft".split())
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def ptb_tokenize(text: str) -> Tokens:
    """Tokens as coco-caption's PTBTokenizer step gives them, before its punctuation filter."""
    out: Tokens = []
    for tok in _TOKEN.findall(text.lower().translate(_QUOTES)):
        if tok == "." and out and out[-1] in _ABBREVIATIONS:  # "mr." stays one token
            out[-1] += "."
        elif tok in _SPLIT:
            out += _SPLIT[tok]
        else:
            out.append("..." if tok.startswith("...") else _RENAME.get(tok, tok))
    return out


def tokenize(text: str) -> Tokens:
    """coco-caption's tokenisation: PTB tokens, lowercased, without its punctuation tokens."""
    return [w for w in ptb_tokenize(text) if w not in PUNCTUATIONS]


def _ngrams(tokens: Tokens, n: int = 4) -> Counter:
    """Counts of every 1..n-gram (as tuples) in ``tokens``."""
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


# ----------------------------------------------------------------------------- BLEU
def bleu(cands: Sequence[Tokens], refs: Sequence[Sequence[Tokens]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as coco's ``BleuScorer.compute_score(option='closest')``."""
    small, tiny = 1e-9, 1e-15  # coco's guards; kept so the numbers match exactly
    correct, guess = [0] * n, [0] * n
    testlen = reflen = 0
    for cand, rs in zip(cands, refs):
        maxref: dict = {}
        for r in rs:
            for g, c in _ngrams(r, n).items():
                maxref[g] = max(maxref.get(g, 0), c)
        for g, c in _ngrams(cand, n).items():
            correct[len(g) - 1] += min(maxref.get(g, 0), c)
        for k in range(n):
            guess[k] += max(0, len(cand) - k)
        testlen += len(cand)
        # closest reference length; ties go to the shorter reference
        reflen += min((abs(len(r) - len(cand)), len(r)) for r in rs)[1]

    scores, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


# ---------------------------------------------------------------------------- ROUGE-L
def _lcs(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence of two token lists."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(cand: Tokens, refs: Sequence[Tokens], beta: float = 1.2) -> float:
    """Sentence ROUGE-L as coco's ``Rouge.calc_score``.

    Precision and recall are each maximised over the references separately,
    then combined into an F-measure weighted by ``beta``.
    """
    # coco splits on " ", so an empty caption counts as one empty token
    cand = cand or [""]
    refs = [r or [""] for r in refs]
    lcs = [_lcs(r, cand) for r in refs]
    prec = max(l / len(cand) for l in lcs)
    rec = max(l / len(r) for l, r in zip(lcs, refs))
    if prec == 0 or rec == 0:
        return 0.0
    return (1 + beta**2) * prec * rec / (rec + beta**2 * prec)


# ----------------------------------------------------------------------------- CIDEr-D
def cider_d(cands: Sequence[Tokens], refs: Sequence[Sequence[Tokens]],
            n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-caption CIDEr-D as coco's ``CiderScorer``; the corpus score is the mean.

    Document frequencies come from the references of this corpus.
    """
    ref_counts = [[_ngrams(r, n) for r in rs] for rs in refs]
    df: Counter = Counter()
    for rcs in ref_counts:
        df.update(set().union(*rcs))
    log_docs = math.log(float(len(ref_counts)))

    def vectorize(counts: Counter):
        vec = [{} for _ in range(n)]
        norm = [0.0] * n
        for g, tf in counts.items():
            w = tf * (log_docs - math.log(max(1.0, df[g])))
            vec[len(g) - 1][g] = w
            norm[len(g) - 1] += w * w
        # coco's "length" counts bigrams (its n == 1 index), kept for exactness
        length = sum(tf for g, tf in counts.items() if len(g) == 2)
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for cand, rcs in zip(cands, ref_counts):
        vec, norm, length = vectorize(_ngrams(cand, n))
        total = [0.0] * n
        for rc in rcs:
            rvec, rnorm, rlength = vectorize(rc)
            penalty = math.exp(-float(length - rlength) ** 2 / (2 * sigma**2))
            for k in range(n):
                # clipped dot product
                val = sum(min(w, rvec[k].get(g, 0.0)) * rvec[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] != 0 and rnorm[k] != 0:
                    val /= norm[k] * rnorm[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(rcs) * 10.0)
    return scores


# ------------------------------------------------------------------------------- API
def caption_metrics(predictions: Mapping[Hashable, str],
                    references: Mapping[Hashable, Sequence[str]],
                    spice: float | None = None) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of ``predictions`` against ``references``.

    Both map the same ids to a caption / a non-empty list of captions. When a
    corpus ``spice`` value is given, ``SPICE`` and ``SPIDEr`` (= mean of
    CIDEr-D and SPICE) are added.
    """
    if set(predictions) != set(references):
        raise ValueError("predictions and references must have the same ids")
    if not predictions:
        raise ValueError("no captions to score")
    ids = list(predictions)
    cands = [tokenize(predictions[i]) for i in ids]
    refs = []
    for i in ids:
        if isinstance(references[i], str) or not references[i]:
            raise ValueError(f"references[{i!r}] must be a non-empty list of captions")
        refs.append([tokenize(r) for r in references[i]])

    out = {f"BLEU-{k + 1}": s for k, s in enumerate(bleu(cands, refs))}
    out["ROUGE-L"] = sum(rouge_l(c, rs) for c, rs in zip(cands, refs)) / len(ids)
    out["CIDEr-D"] = sum(cider_d(cands, refs)) / len(ids)
    if spice is not None:
        out["SPICE"] = float(spice)
        out["SPIDEr"] = (out["CIDEr-D"] + float(spice)) / 2
    return out
