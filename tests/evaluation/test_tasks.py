"""The task runners on a tiny untrained model: likelihood against the training loss, the
text-encoder paths, and bad input reported and left out."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from pengi_kit.api import Pengi
from pengi_kit.errors import PengiKitError
from pengi_kit.evaluation.tasks import evaluate
from pengi_kit.model import build_model
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe


@pytest.fixture(scope="module")
def pengi(tmp_path_factory):
    torch.manual_seed(0)
    raw = tiny_recipe(tmp_path_factory.mktemp("run"), text_encoder=True)
    model = build_model(from_dict(raw, ["model.lm.tokenizer='byte'"])).eval()  # no label is an unknown word
    return Pengi(model, num_workers=1)


def test_log_likelihood_is_the_mean_token_log_probability_of_training(pengi):
    model = pengi.model
    clips = [(np.random.default_rng(i).uniform(-0.5, 0.5, 8000).astype(np.float32), 16000) for i in range(3)]
    texts = ["a dog", "rain on a tin roof now", "x"]
    scores = pengi.log_likelihood(clips, "this is a sound of", texts, batch_size=4)  # forces chunking
    prompt = model.tokenize_prompts(["this is a sound of"])
    with torch.no_grad():
        for i, clip in enumerate(clips):
            for j, text in enumerate(texts):
                target = model.tokenize_targets([text])
                out = model(pengi._batch([clip], None), prompt["input_ids"], prompt["attention_mask"],
                            target["input_ids"], target["attention_mask"])
                assert scores[i, j].item() == pytest.approx(-(out["loss_sum"] / out["tokens"]).item(), abs=1e-4)


@pytest.fixture()
def corpus(tmp_path):
    """Three readable clips, one corrupt file and one bad manifest line."""
    rows = []
    for i, label in enumerate(["dog", "rain", "dog"]):
        sf.write(tmp_path / f"{i}.wav", np.random.default_rng(i).uniform(-0.5, 0.5, 8000), 16000)
        rows += [{"audio": f"{i}.wav", "task": "classification", "text": label},
                 {"audio": f"{i}.wav", "task": "caption", "text": f"a {label} sound"}]
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav file")
    rows.append({"audio": "broken.wav", "task": "classification", "text": "dog"})
    lines = [json.dumps(r) for r in rows] + ['{"audio": "0.wav", "task": "classification"}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    cls = tmp_path / "cls.jsonl"
    cls.write_text("".join(line + "\n" for line in lines if '"caption"' not in line))
    return tmp_path


def test_bad_input_is_reported_and_left_out(pengi, corpus):
    for method in ("generate", "likelihood"):
        result = evaluate(pengi, "classification", corpus / "cls.jsonl", scoring=method)
        assert len(result.predictions) == 3, method
        assert len(result.problems) == 2, result.problems
        assert any("cls.jsonl:5: missing or empty 'text'" in p for p in result.problems)
        assert any(p.startswith(str(corpus / "broken.wav")) for p in result.problems)
        assert 0 <= result.metrics["accuracy"] <= 1
    assert result.info["classes"] == 2 and result.info["multi_label"] is False
    # scoring without generation: the broken clip's row, and its caption as a candidate, leave too
    result = evaluate(pengi, "retrieval", corpus / "cls.jsonl", scoring="likelihood")
    assert (result.info["clips"], result.info["captions"], len(result.problems)) == (3, 3, 2)
    result = evaluate(pengi, "linear-probe", corpus / "cls.jsonl", train_manifest=corpus / "cls.jsonl")
    assert (result.info["train_clips"], result.info["test_clips"], len(result.problems)) == (3, 3, 4)
    with pytest.raises(Exception):
        evaluate(pengi, "classification", corpus / "cls.jsonl", on_error="fail")


def test_text_encoder_paths(pengi, corpus):
    result = evaluate(pengi, "classification", corpus / "cls.jsonl", matcher="text-encoder")
    assert result.info["matcher"] == "text-encoder"
    result = evaluate(pengi, "retrieval", corpus / "cls.jsonl")  # auto: the model has a text encoder
    assert result.info["scoring"] == "embedding" and result.info["clips"] == 3
    assert set(result.metrics) == {f"{d} {m}" for d in ("text-to-audio", "audio-to-text")
                                   for m in ("R@1", "R@5", "R@10", "mAP@10")}
    assert result.metrics["text-to-audio R@10"] == 1.0  # 3 clips: always in the top 10


def test_errors_name_the_fix(pengi, corpus):
    with pytest.raises(PengiKitError, match="did you mean 'captioning'"):
        evaluate(pengi, "captions", corpus / "m.jsonl")
    with pytest.raises(PengiKitError, match="needs --train-manifest"):
        evaluate(pengi, "linear-probe", corpus / "cls.jsonl")
    with pytest.raises(PengiKitError, match="label 'rain' .* is not among the 1 classes"):
        evaluate(pengi, "classification", corpus / "cls.jsonl", classes=["dog"], scoring="likelihood")
