"""caption_metrics must reproduce pycocoevalcap's Bleu / Rouge / Cider exactly."""

import math

import pytest

from pengi_kit.evaluation.metrics import PUNCTUATIONS, caption_metrics, tokenize

bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS as COCO_PUNCTUATIONS  # noqa: E402

CORPORA = {
    "audio": (
        {
            "a": "A dog barks loudly while a car passes by",
            "b": "rain falls on a tin roof",
            "c": "birds birds birds chirping",
            "d": "a man speaks",
        },
        {
            "a": ["A dog is barking and a car drives past .", "dog barks as cars pass by",
                  "a dog barks loudly , a vehicle passes"],
            "b": ["Heavy rain falls on a metal roof", "rain on a roof", "rain is falling onto a tin roof"
                  " while thunder rumbles in the distance"],
            "c": ["birds chirping in the trees", "many birds chirp and sing", "birds birds chirp"],
            "d": ["a man is speaking to a crowd", "a man speaks", "someone talks"],
        },
    ),
    "repeats": (
        {1: "the the the the the cat", 2: "a a b b a a b b", 3: "x"},
        {
            1: ["the cat is on the mat", "there is a cat on the mat"],
            2: ["a b a b", "b b a a b", "a a a a a a a a a a"],
            3: ["x y z", "x"],
        },
    ),
    "long_short": (
        {"p": "water", "q": "a very long caption that keeps going and going with many extra words here",
         "r": "engine idles then revs up twice and idles again"},
        {"p": ["water flows in a stream", "water runs"],
         "q": ["a long caption", "a caption that goes on"],
         "r": ["an engine idles and then revs", "engine revving twice", "a motor idling then revving up"]},
    ),
}


def coco_scores(preds, refs):
    res = {k: [" ".join(tokenize(v))] for k, v in preds.items()}
    gts = {k: [" ".join(tokenize(r)) for r in refs[k]] for k in preds}
    bleu, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"BLEU-{k + 1}": b for k, b in enumerate(bleu)}
    out.update({"ROUGE-L": rouge, "CIDEr-D": cider})
    return out


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_matches_pycocoevalcap(name):
    preds, refs = CORPORA[name]
    ours, theirs = caption_metrics(preds, refs), coco_scores(preds, refs)
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-9), key
    assert ours["CIDEr-D"] > 0  # the corpora are not degenerate


def test_single_caption_by_hand():
    # cand "the cat sat" (3 tokens; "." is dropped), refs "the cat sat down" (4)
    # and "a cat" (2).
    # BLEU-1: every cand unigram occurs in a ref -> 3/3. Both refs are 1 token
    #   away; coco takes min((1, 2), (1, 4)) -> reflen 2 < testlen 3, so no
    #   brevity penalty: BLEU-1 = 1.
    # ROUGE-L: LCS with ref 1 = 3 -> P = 3/3, R = 3/4; with ref 2 LCS = 1.
    #   max P = 1, max R = 0.75, F = (1 + 1.44) * 1 * 0.75 / (0.75 + 1.44 * 1)
    #   = 1.83 / 2.19.
    m = caption_metrics({0: "The cat sat ."}, {0: ["the cat sat down", "a cat"]})
    assert m["BLEU-1"] == pytest.approx(1.0, abs=1e-9)
    assert m["ROUGE-L"] == pytest.approx(1.83 / 2.19, abs=1e-12)
    # one image: idf = log(1) - log(df) <= 0 everywhere, coco's CIDEr-D is 0
    assert m["CIDEr-D"] == 0.0


def test_brevity_penalty_by_hand():
    # cand "a dog" (2 tokens), closest ref "a dog barks" (3): BLEU-1 = exp(1 - 3/2)
    m = caption_metrics({"x": "a dog"}, {"x": ["a dog barks", "a dog barks at a cat"]})
    assert m["BLEU-1"] == pytest.approx(math.exp(-0.5), abs=1e-9)


def test_tokenize_and_spider():
    assert PUNCTUATIONS == set(COCO_PUNCTUATIONS)
    assert tokenize("A Dog , barks -- LOUDLY ...") == ["a", "dog", "barks", "loudly"]
    preds, refs = CORPORA["audio"]
    m = caption_metrics(preds, refs, spice=0.2)
    assert m["SPIDEr"] == pytest.approx((m["CIDEr-D"] + 0.2) / 2)
    assert "SPIDEr" not in caption_metrics(preds, refs)


def test_bad_input():
    with pytest.raises(ValueError):
        caption_metrics({1: "a"}, {2: ["a"]})
    with pytest.raises(ValueError):
        caption_metrics({1: "a"}, {1: []})


def test_matches_pycocoevalcap_random():
    import random

    rng = random.Random(0)
    words = "a the dog cat barks runs rain on roof car , . loud soft".split()

    def cap():
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))

    preds = {i: cap() for i in range(30)}
    refs = {i: [cap() for _ in range(rng.randint(1, 5))] for i in range(30)}
    ours, theirs = caption_metrics(preds, refs), coco_scores(preds, refs)
    for key in theirs:
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-9), key
