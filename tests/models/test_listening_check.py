"""The listening check (pengi_kit.models.listening): each row's answer scored with its own clip's
audio and with a random other clip's, in training (metrics.jsonl, one warning line) and in
`pengi-kit evaluate` (the `listening` task), honest by construction: never a row of the same
clip as partner, the same figure whatever the manifest's order, at least about ln K per answer
for a model that tells K classes apart from the audio, about 0 for a deaf one."""
import json
import math
import random

import numpy as np
import pytest
import soundfile as sf
import torch

from pengi_kit.api import Pengi
from pengi_kit.data.loader import eval_loader
from pengi_kit.engine.trainer import Trainer
from pengi_kit.evaluation.tasks import evaluate
from pengi_kit.models import build_model
from pengi_kit.models.listening import LISTENING_THRESHOLD, partners
from pengi_kit.plugins import registry
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

WARNING = "pengi-kit: the model is not listening"
CLASSES = ["dog", "rain", "engine", "bell"]  # K = 4


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _zero_audio_prefix(model):
    """Every clip's audio prefix is zeros: the model cannot depend on its audio."""
    width = model.lm.embed(torch.zeros(1, 1, dtype=torch.long)).shape[-1]
    k = model.audio_mapper.prefix_length
    model.audio_prefix = lambda audio, lengths=None: torch.zeros(len(audio), k, width, device=audio.device)


def _oracle(model, deaf=False, error=0.02):
    """Make ``model`` a K-class classifier that hears its clip's class (the clips' constant level,
    (class + 1) / 10) and gives the right answer probability 1 - error, each other 1/(K-1) of
    error; ``deaf``: the same answer probabilities whatever the audio (1 / K each)."""
    first = {model.tokenize_targets([c])["input_ids"][0, 0].item(): i for i, c in enumerate(CLASSES)}
    model.audio_prefix = lambda audio, lengths=None: (audio.mean(1) * 10 - 1).round()[:, None, None].expand(-1, 2, 4)

    def reference_nll(audio_prefix, text_prefix, ids, mask):
        heard = audio_prefix[:, 0, 0].long()
        answer = torch.tensor([first[i] for i in ids[:, 0].tolist()], device=ids.device)
        p = torch.where(heard == answer, 1 - error, error / (len(CLASSES) - 1))
        p = torch.full_like(p, 1 / len(CLASSES)) if deaf else p
        return -torch.log(p), mask.sum(1)

    model.reference_nll = reference_nll


def _manifest(folder, order):
    """48 clips of 4 classes, each with two rows (the class twice: rows of one clip), in ``order``."""
    rows = []
    for i in range(48):
        label = i % len(CLASSES)
        sf.write(folder / f"{i}.wav", np.full(1600, (label + 1) / 10, dtype=np.float32), 16000)
        rows += [{"audio": f"{i}.wav", "task": "classification", "text": CLASSES[label]}] * 2
    if order == "sorted":  # a prepared manifest often lists a class's clips together
        rows.sort(key=lambda r: r["text"])
    else:
        random.Random(1).shuffle(rows)
    path = folder / f"{order}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_partners_are_rows_of_other_clips_in_a_seeded_order():
    clips = ["a", "a", "b", "c", "c", "c", "d"]
    for seed in range(20):
        chosen = partners(clips, seed)
        assert all(clips[p] != clips[i] for i, p in enumerate(chosen))
    assert partners(clips, 0) == partners(clips, 0) != partners(clips, 1)
    assert partners(["a", "a"]) == [-1, -1] and partners([]) == []


def test_every_validation_logs_the_listening_check(tmp_path, capsys):
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 24, "eval_every": 8, "log_every": 8})
    Trainer(from_dict(raw), progress=False).fit()
    valid = [r for r in _rows(tmp_path / "run") if "valid_loss" in r]
    assert [r["step"] for r in valid] == [8, 16, 24]
    for r in valid:  # every row has a partner: per token it is the difference of the two losses
        assert r["listening_per_token"] == pytest.approx(r["valid_loss_shuffled"] - r["valid_loss"], abs=1e-9)
        assert {"listening", "listening_differing"} <= set(r)
    err = capsys.readouterr().err
    assert "step 24: valid_loss" in err and "listening" in err


def test_validation_scores_each_answer_with_another_clips_audio(tmp_path):
    trainer = Trainer(from_dict(tiny_recipe(tmp_path / "run")), progress=False)
    model = trainer.model.eval()
    batch = next(iter(eval_loader(trainer.valid_data, 8, seed=0)))
    inputs = trainer._inputs(batch)
    other = torch.tensor(partners(inputs["clip_key"].tolist()))
    assert all(batch["clips"][p] != batch["clips"][i] for i, p in enumerate(other.tolist()))
    with torch.no_grad():
        sums = {k: v.tolist() for k, v in model.validation_sums(inputs).items()}
        own = model(**inputs)["loss_sum"].item()
        swapped = model(**{**inputs, "audio": inputs["audio"][other]})["loss_sum"].item()
    tokens = model.loss_units(inputs).item()
    assert sums["valid_loss"] == pytest.approx([own, tokens], rel=1e-5)
    assert sums["valid_loss_shuffled"] == pytest.approx([swapped, tokens], rel=1e-5)
    assert sums["listening"] == pytest.approx([swapped - own, len(other)], rel=1e-4, abs=1e-4)
    one = {k: v[:1] for k, v in inputs.items()}  # a batch of one clip has nothing to swap
    with torch.no_grad():
        assert set(model.validation_sums(one)) == {"valid_loss"}


def test_the_figure_does_not_depend_on_the_manifest_order(tmp_path):
    """Sorted by answer or shuffled, the manifest gives the same figure (within 10%), in training
    and in evaluate; a model that answers K classes from the audio scores at least ln K per
    answer there, a deaf one about 0."""
    sorted_path, shuffled_path = _manifest(tmp_path, "sorted"), _manifest(tmp_path, "shuffled")
    figures = {}
    for name, path in (("sorted", sorted_path), ("shuffled", shuffled_path)):
        raw = tiny_recipe(tmp_path / name, train={"batch_size": 8})
        raw["data"] = {"train": str(path), "valid": str(path)}
        trainer = Trainer(from_dict(raw, ["model.lm.tokenizer='byte'"]), progress=False)  # answers differ at once
        _oracle(trainer.model)
        figures["train", name] = trainer.validate()["listening"]
        pengi = Pengi(trainer.model.eval(), num_workers=1)
        figures["evaluate", name] = evaluate(pengi, "listening", path).metrics["listening"]
        _oracle(trainer.model, deaf=True)
        figures["deaf", name] = evaluate(pengi, "listening", path).metrics["listening"]
    for where in ("train", "evaluate"):
        assert figures[where, "sorted"] == pytest.approx(figures[where, "shuffled"], rel=0.1), figures
        assert figures[where, "sorted"] >= 0.8 * math.log(len(CLASSES)), figures
    assert abs(figures["deaf", "sorted"]) < 1e-6 and abs(figures["deaf", "shuffled"]) < 1e-6


def test_a_model_with_a_zeroed_audio_prefix_is_flagged_once(tmp_path, capsys):
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 4, "eval_every": 2})
    trainer = Trainer(from_dict(raw), progress=False)
    _zero_audio_prefix(trainer.model)
    trainer.fit()
    valid = [r for r in _rows(tmp_path / "run") if "valid_loss" in r]
    assert len(valid) == 2
    for r in valid:
        assert abs(r["listening"]) < 1e-5
    err = capsys.readouterr().err
    assert err.count(WARNING) == 1
    line = next(line for line in err.splitlines() if WARNING in line)
    assert "nats per answer when clips' audio is swapped" in line and "docs/training.md" in line


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
    assert m["listening_per_token"] == pytest.approx(m["loss_shuffled"] - m["loss"])
    assert result.info["clips"] == 3 and result.info["answers"] == 6
    assert result.problems and "broken.wav" in result.problems[0]
    # each answer's loss with its own clip and with its partner's clip, from log_likelihood
    clips = [str(manifest.parent / f"{i}.wav") for i in range(3)]
    rows = [(i, text) for i, label in enumerate(["dog", "rain", "engine"]) for text in (f"a {label} sound",
                                                                                        f"{label} noise")]
    prompt = "generate audio caption"
    other = partners([clips[i] for i, _ in rows])
    length = {t: pengi.model.tokenize_targets([t])["attention_mask"].sum().item() for _, t in rows}

    def nll(clip, text):
        return -pengi.log_likelihood([clip], prompt, [text])[0, 0].item() * length[text]

    gains = [nll(clips[rows[p][0]], t) - nll(clips[i], t) for (i, t), p in zip(rows, other)]
    assert m["listening"] == pytest.approx(sum(gains) / len(rows), rel=1e-3, abs=1e-4)
    assert m["loss"] == pytest.approx(sum(nll(clips[i], t) for i, t in rows) / sum(length.values()), rel=1e-4)


def test_evaluate_flags_a_model_that_does_not_listen(pengi, manifest, capsys):
    _zero_audio_prefix(pengi.model)
    try:
        result = evaluate(pengi, "listening", manifest)
    finally:
        del pengi.model.audio_prefix
    assert abs(result.metrics["listening"]) < 1e-5 < LISTENING_THRESHOLD
    assert WARNING in result.info["warning"]
    assert capsys.readouterr().err.count(WARNING) == 1
