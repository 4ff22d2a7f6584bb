"""The multiple-choice task on a tiny model: benchmark folders prepared into manifests, the three
scorers, the same answers and scores at any batch size, and predictions exported in the
benchmark's own format that its rule scores as the task did."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from pengi_kit.api import Pengi
from pengi_kit.data.adapters import prepare
from pengi_kit.errors import PengiKitError
from pengi_kit.evaluation import multiple_choice as mc
from pengi_kit.evaluation.tasks import evaluate
from pengi_kit.model import build_model
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

CHOICES = [["dog", "rain", "a car horn"], ["yes", "no"], ["Café", "Thé", "eau", "lait"]]


@pytest.fixture(scope="module")
def pengi(tmp_path_factory):
    torch.manual_seed(0)
    raw = tiny_recipe(tmp_path_factory.mktemp("run"), text_encoder=True, prompt_length=192)  # MMAU's prompt
    model = build_model(from_dict(raw, ["model.lm.tokenizer='byte'"])).eval()
    return Pengi(model, num_workers=1)


def _clip(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).uniform(-0.5, 0.5, 8000), 16000)


@pytest.fixture()
def mmau_root(tmp_path):
    """Nine MMAU test-mini items (questions of different lengths), one whose clip is missing, and one
    test-split item without an answer."""
    items = []
    for i in range(11):
        choices = CHOICES[i % 3]
        item = {"id": f"q{i}", "audio_id": f"./test-mini-audios/{i}.wav", "question": "what?" + " really" * i,
                "choices": choices, "answer": choices[i % len(choices)], "dataset": "fixture",
                "task": ["sound", "music", "speech"][i % 3], "split": "test-mini", "category": "Perception",
                "sub-category": "fixture", "difficulty": "easy"}
        if i != 9:
            _clip(tmp_path / "test-mini-audios" / f"{i}.wav", i)
        if i == 10:
            del item["answer"]
            item["split"] = "test"
        items.append(item)
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(items))
    return tmp_path


def test_prepare_reads_each_benchmark_layout(tmp_path, mmau_root):
    report = prepare("mmau", mmau_root, tmp_path / "mmau.jsonl")
    assert report.rows == 10 and len(report.problems) == 1 and "9.wav" in report.problems[0]
    rows = [json.loads(line) for line in (tmp_path / "mmau.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"] == "\nwhat?  Select one option from the provided choices.\n['dog', 'rain', 'a car horn']."
    assert rows[0]["benchmark"] == "mmau" and rows[0]["item"]["id"] == "q0" and rows[0]["text"] == "dog"
    assert rows[-1]["split"] == "test" and rows[-1]["text"] == ""
    assert rows[0]["source"].startswith("mmau-test-mini.json sha256:")

    air = tmp_path / "air" / "Foundation"
    _clip(air / "Speaker_Gender_Vox" / "a.wav", 1)
    _clip(air / "Audio_Grounding_AudioGrounding" / "b.flac", 2)
    meta = [{"path": "a.wav", "question": "who?", "choice_a": "man", "choice_b": "woman", "answer_gt": "woman",
             "task_name": "Speaker_Gender", "dataset_name": "Vox", "uniq_id": 1},
            {"path": "b.wav", "question": "when?", "choice_a": "[0.0, 1.0]", "choice_b": "[1.0, 2.0]",
             "choice_c": "[2.0, 3.0]", "choice_d": "[3.0, 4.0]", "answer_gt": "[0.0, 1.0]",
             "task_name": "Audio_Grounding", "dataset_name": "AudioGrounding", "uniq_id": 2}]
    (air / "Foundation_meta.json").write_text(json.dumps(meta))
    report = prepare("air-bench", tmp_path / "air", tmp_path / "air.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "air.jsonl").read_text().splitlines()]
    assert report.rows == 2 and not report.problems  # Audio_Grounding's clips are read as .flac
    assert rows[0]["prompt"].endswith("who?\nA. man\nB. woman\nC. None\nD. None") and rows[0]["text"] == "woman"

    mmar = tmp_path / "mmar"
    _clip(mmar / "audio" / "x.wav", 3)
    (mmar / "MMAR-meta.json").write_text(json.dumps([{"id": "x", "audio_path": "./audio/x.wav", "question": "q?",
                                                      "choices": ["a", "b"], "answer": "b", "modality": "sound",
                                                      "category": "Signal Layer", "sub-category": "s"}]))
    assert prepare("mmar", mmar, tmp_path / "mmar.jsonl").rows == 1
    with pytest.raises(PengiKitError, match="no mmar metadata file"):
        prepare("mmar", mmau_root, tmp_path / "none.jsonl")


def test_three_scorers_agree_with_the_model_and_hold_at_any_batch_size(pengi, tmp_path, mmau_root):
    prepare("mmau", mmau_root, tmp_path / "m.jsonl")
    one = evaluate(pengi, "multiple-choice", tmp_path / "m.jsonl", batch_size=1, scoring="auto",
                   max_new_tokens=4, export_predictions=tmp_path / "exported.json")
    for size in (8, 32):
        other = evaluate(pengi, "multiple-choice", tmp_path / "m.jsonl", batch_size=size, max_new_tokens=4)
        assert [p["output"] for p in one.predictions] == [p["output"] for p in other.predictions]
        assert one.metrics == other.metrics and len(one.predictions) == 10
    # likelihood: each choice's summed log-probability, as the model computes it
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    clips = [str(tmp_path / r["audio"]) for r in rows]
    for size in (1, 3, 32):
        sums = pengi.log_likelihood(clips, [r["prompt"] for r in rows], [r["item"]["choices"] for r in rows],
                                    batch_size=size, reduction="sum")
        for p, r, s in zip(one.predictions, rows, sums):
            assert p["likelihood"] == r["item"]["choices"][int(s.argmax())]
        if size == 1:
            first = sums
        torch.testing.assert_close(torch.cat(sums), torch.cat(first), atol=1e-5, rtol=0)
    answered = [(p, r) for p, r in zip(one.predictions, rows) if r["text"]]
    assert one.metrics["accuracy (likelihood)"] == sum(p["likelihood"] == r["text"] for p, r in answered) / 9
    assert one.info["counts"]["items"] == 9  # the test-split item has no answer to score
    # the exported file is the benchmark's own layout; its rule gives the task's figure
    bench, items, official, strict = mc.score_file(tmp_path / "exported.json")
    assert len(items) == 10 and all(i.record["model_output"] == p["output"] for i, p in zip(items, one.predictions))
    assert official.metrics["accuracy (official)"] == one.metrics["accuracy (official)"]
    assert strict.metrics["accuracy (strict)"] == one.metrics["accuracy (strict)"]


def test_a_prompt_the_model_would_cut_is_an_error_naming_the_item(pengi, tmp_path, mmau_root):
    prepare("mmau", mmau_root, tmp_path / "m.jsonl")
    with pytest.raises(PengiKitError, match=r"m.jsonl:1: item q0: the prompt has \d+ tokens and the model reads 192"):
        evaluate(pengi, "multiple-choice", tmp_path / "m.jsonl", prompt="{question} " + "padding " * 40)
    result = evaluate(pengi, "multiple-choice", tmp_path / "m.jsonl", prompt="{question}", scoring="likelihood")
    assert result.predictions[1]["prompt"] == "what? really" and "accuracy (official)" not in result.metrics


def test_the_command_scores_a_checkpoint_and_exports_for_the_leaderboard(untrained_checkpoint, tmp_path, mmau_root):
    from click.testing import CliRunner

    from pengi_kit.cli import main

    prepare("mmau", mmau_root, tmp_path / "m.jsonl")
    run = CliRunner().invoke(main, ["evaluate", str(untrained_checkpoint), "--task", "multiple-choice", "--manifest",
                                    str(tmp_path / "m.jsonl"), "--limit", "2", "--prompt", "{question}",
                                    "--export-predictions", str(tmp_path / "up.json"), "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    task = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"][0]
    assert {"accuracy (official)", "accuracy (strict)", "accuracy (likelihood)"} <= set(task["metrics"])
    assert task["info"]["template"] == "{question}" and task["info"]["items"] == 2
    assert task["info"]["benchmark_files"][0].startswith("mmau-test-mini.json sha256:")  # which release
    exported = json.loads((tmp_path / "up.json").read_text())
    assert [r["id"] for r in exported] == ["q0", "q1"] and all("model_output" in r for r in exported)
    card = json.loads((tmp_path / "out" / "results.json").read_text())["card"]
    assert card["decoding"]["method"] == "greedy" and card["batch_size"] == 32 and card["device"] == "cpu"
    assert list(card["weights_sha256"]) == ["model.safetensors"] and card["versions"]["torch"]
    assert task["manifest_sha256"]
    # the card reruns the evaluation exactly; a changed manifest is a difference
    run = CliRunner().invoke(main, ["evaluate", "--reproduce", str(tmp_path / "out" / "results.json")])
    assert run.exit_code == 0 and "every figure is the same" in run.output, run.output
    rows = (tmp_path / "m.jsonl").read_text().splitlines()
    (tmp_path / "m.jsonl").write_text("\n".join([rows[1], rows[0], *rows[2:]]) + "\n")
    run = CliRunner().invoke(main, ["evaluate", "--reproduce", str(tmp_path / "out" / "results.json")])
    assert run.exit_code == 1 and "m.jsonl has changed (sha256)" in run.output, run.output
