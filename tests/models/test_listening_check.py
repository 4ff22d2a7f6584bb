"""The listening check: the validation loss with each clip's own audio against the loss with
the audio swapped across the batch, in training (metrics.jsonl, one warning line) and in
`pengi-kit evaluate` (the `listening` task)."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from pengi_kit.api import Pengi
from pengi_kit.data.loader import eval_loader
from pengi_kit.engine.trainer import Trainer
from pengi_kit.evaluation.tasks import evaluate
from pengi_kit.model import LISTENING_THRESHOLD, build_model
from pengi_kit.plugins import registry
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

WARNING = "pengi-kit: the model is not listening"


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _zero_audio_prefix(model):
    """Every clip's audio prefix is zeros: the model cannot depend on its audio."""
    width = model.lm.embed(torch.zeros(1, 1, dtype=torch.long)).shape[-1]
    k = model.audio_mapper.prefix_length
    model.audio_prefix = lambda audio: torch.zeros(len(audio), k, width, device=audio.device)


def test_every_validation_logs_the_listening_check(tmp_path, capsys):
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 24, "eval_every": 8, "log_every": 8})
    Trainer(from_dict(raw), progress=False).fit()
    valid = [r for r in _rows(tmp_path / "run") if "valid_loss" in r]
    assert [r["step"] for r in valid] == [8, 16, 24]
    for r in valid:
        assert r["listening"] == pytest.approx(r["valid_loss_shuffled"] - r["valid_loss"], abs=1e-9)
    err = capsys.readouterr().err
    assert "step 24: valid_loss" in err and "listening" in err


def test_the_shuffled_loss_is_the_loss_with_the_audio_rolled_by_one(tmp_path):
    trainer = Trainer(from_dict(tiny_recipe(tmp_path / "run")), progress=False)
    model = trainer.model.eval()
    batch = next(iter(eval_loader(trainer.valid_data, 4)))
    inputs = trainer._inputs(batch)
    with torch.no_grad():
        sums = {k: v.tolist() for k, v in model.validation_sums(inputs).items()}
        out = model(**inputs)
        rolled = model(**{**inputs, "audio": inputs["audio"].roll(1, dims=0)})
    (own, tokens), (shuffled, tokens2) = sums["valid_loss"], sums["valid_loss_shuffled"]
    assert own == pytest.approx(out["loss_sum"].item(), rel=1e-5)
    assert tokens == tokens2 == model.loss_units(inputs).item()
    assert shuffled == pytest.approx(rolled["loss_sum"].item(), rel=1e-5)
    assert sums["listening"][0] == pytest.approx(shuffled - own, rel=1e-5)
    one = {k: v[:1] for k, v in inputs.items()}  # a batch of one clip has nothing to swap
    with torch.no_grad():
        assert set(model.validation_sums(one)) == {"valid_loss"}


def test_a_model_with_a_zeroed_audio_prefix_is_flagged_once(tmp_path, capsys):
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 4, "eval_every": 2})
    trainer = Trainer(from_dict(raw), progress=False)
    _zero_audio_prefix(trainer.model)
    trainer.fit()
    valid = [r for r in _rows(tmp_path / "run") if "valid_loss" in r]
    assert len(valid) == 2
    for r in valid:
        assert abs(r["listening"]) < 1e-6
    err = capsys.readouterr().err
    assert err.count(WARNING) == 1
    line = next(line for line in err.splitlines() if WARNING in line)
    assert "nats/token when clips' audio is swapped" in line and "docs/training.md" in line


@pytest.fixture(scope="module")
def pengi():
    torch.manual_seed(0)
    model = build_model(from_dict(tiny_recipe("unused"), ["model.lm.tokenizer='byte'"])).eval()
    return Pengi(model, num_workers=1)


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    for i, label in enumerate(["dog", "rain", "engine"]):
        sf.write(tmp_path / f"{i}.wav", np.random.default_rng(i).uniform(-0.5, 0.5, 8000), 16000)
        rows += [{"audio": f"{i}.wav", "task": "caption", "text": f"a {label} sound"},
                 {"audio": f"{i}.wav", "task": "caption", "text": f"{label} noise"}]
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav file")
    rows.append({"audio": "broken.wav", "task": "caption", "text": "nothing"})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_reports_the_listening_check(pengi, manifest):
    assert "listening" in registry().names("task")
    result = evaluate(pengi, "listening", manifest)
    m = result.metrics
    assert m["listening"] == pytest.approx(m["loss_shuffled"] - m["loss"])
    assert result.info["clips"] == 3 and result.problems and "broken.wav" in result.problems[0]
    # the own-audio loss is the token-weighted mean of log_likelihood's per-token scores
    clips = [str(manifest.parent / f"{i}.wav") for i in range(3)]
    texts = [["a dog sound", "dog noise"], ["a rain sound", "rain noise"], ["a engine sound", "engine noise"]]
    prompt = "generate audio caption"
    lengths = [[pengi.model.tokenize_targets([t])["attention_mask"].sum().item() for t in ts] for ts in texts]
    total = sum(-pengi.log_likelihood([c], prompt, ts)[0, j].item() * lengths[i][j]
                for i, (c, ts) in enumerate(zip(clips, texts)) for j in range(len(ts)))
    assert m["loss"] == pytest.approx(total / sum(map(sum, lengths)), rel=1e-4)
    # with the next clip's audio: clip 0 hears clip 1, clip 1 hears clip 2, clip 2 hears clip 0
    shuffled = sum(-pengi.log_likelihood([clips[(i + 1) % 3]], prompt, ts)[0, j].item() * lengths[i][j]
                   for i, ts in enumerate(texts) for j in range(len(ts)))
    assert m["loss_shuffled"] == pytest.approx(shuffled / sum(map(sum, lengths)), rel=1e-4)


def test_evaluate_flags_a_model_that_does_not_listen(pengi, manifest, capsys, monkeypatch):
    _zero_audio_prefix(pengi.model)
    try:
        result = evaluate(pengi, "listening", manifest)
    finally:
        del pengi.model.audio_prefix
    assert abs(result.metrics["listening"]) < 1e-6 < LISTENING_THRESHOLD
    assert WARNING in result.info["warning"]
    assert capsys.readouterr().err.count(WARNING) == 1
