"""PTB tokenisation, METEOR and SPICE against coco-caption's Java programs (skipped without Java)."""
import shutil

import pytest

from pengi_kit.evaluation import java
from pengi_kit.evaluation.metrics import tokenize

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime")

CAPTIONS = [
    "A dog barks, then a man's voice says \"hello!\"",
    "Rain falls on a tin roof (heavily) while thunder rumbles.",
    "Birds chirp... and a car drives by; someone can't stop laughing!",
    "A high-pitched whistle blows 3.5 times at 10:30 a.m. in the U.S.",
    "Water runs/drips into a sink & a person speaks [softly] {quietly}",
    "\"Don't\" she said -- they're gone, isn't it? I'd've won.",
    "A cat meows 2,000 times; it's 50% louder - than $5 worth.",
    "people talk 'loudly' while   a  baby cries?!",
    "ok. Mr. Smith's dog's bark's echo. e-mail #1 @home",
    "An engine idles and revs up;it accelerates.Then stops",
    "wind blows:loud noises*crash + bang = boom ~ done | end",
    "gonna be at 5pm with the a/c on and a t-shirt.... hello...world wow!!! you cannot",
    "a--b x- -x 3-4 4. the U.K. at 3 p.m e.g. this, i.e. that z.",
    "People are talking.  A woman laughs.A man shouts ok, so.. a.b.c. x.y",
    "A man talks while Sheep bleats(in the background) \u201cquoted\u201d it\u2019s",
]


@needs_java
def test_tokenize_matches_the_java_ptb_tokenizer():
    ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    theirs = ptb.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS)})
    for i, caption in enumerate(CAPTIONS):
        assert " ".join(tokenize(caption)) == theirs[i][0], caption


@needs_java
@pytest.mark.slow
def test_meteor_matches_pycocoevalcap():
    meteor_mod = pytest.importorskip("pycocoevalcap.meteor.meteor")
    cands = ["a dog barks loudly", "rain falls on a roof", "birds sing"]
    refs = [["a dog is barking", "dog barks"], ["heavy rain on a metal roof"], ["birds chirp in trees", "birds sing"]]
    theirs, _ = meteor_mod.Meteor().compute_score({i: r for i, r in enumerate(refs)},
                                                  {i: [c] for i, c in enumerate(cands)})
    ours = java.meteor(cands, refs)
    assert ours == pytest.approx(theirs, abs=1e-6) and 0 < ours < 1


def test_missing_java_or_jars_is_unavailable_not_zero(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(java.Unavailable, match="no Java runtime"):
        java.meteor(["a dog"], [["a dog barks"]])
    monkeypatch.undo()
    if shutil.which("java") is None:
        pytest.skip("no Java runtime")
    jar = tmp_path / "spice-1.0.jar"
    jar.write_bytes(b"")
    monkeypatch.setenv("PENGI_KIT_SPICE_JAR", str(jar))
    with pytest.raises(java.Unavailable, match="Stanford CoreNLP"):
        java.spice(["a dog"], [["a dog barks"]])
    monkeypatch.setenv("PENGI_KIT_METEOR_JAR", str(tmp_path / "nope.jar"))
    with pytest.raises(java.Unavailable, match="not a file"):
        java.meteor(["a dog"], [["a dog barks"]])
