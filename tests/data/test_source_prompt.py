"""A data source's ``prompt``: one question for every row of a manifest that has none of its
own, without a templates table (a dataset adapter's rows included)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from pengi_kit.data.build import build_dataset
from pengi_kit.data.manifest import read_manifest
from pengi_kit.errors import RecipeError
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

ASK = "what digit is spoken?"


def test_rows_without_a_prompt_take_the_dataset_prompt(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"audio": "a.wav", "text": "seven"},
            {"audio": "b.wav", "task": "qa", "question": "which number?", "text": "three"},
            {"audio": "c.wav", "prompt": "say it", "text": "one"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b, c = read_manifest(path, prompt=ASK)[0]
    assert [(e.prompt, e.task) for e in (a, b, c)] == [(ASK, None), (ASK, "qa"), ("say it", None)]
    assert read_manifest(path, prompt=ASK, task="classification")[0][0].task == "classification"  # a label only
    with pytest.raises(Exception, match="missing 'prompt' or 'task'"):
        read_manifest(path)  # without it the first row has no prompt
    # an empty prompt lets rows without one through (a tagger reads labels), templates still apply
    assert [(e.prompt, e.task) for e in read_manifest(path, prompt="")[0]] == [
        ("", None), ("question: which number?", "qa"), ("say it", None)]
    csv = tmp_path / "m.csv"
    csv.write_text("audio,text\na.wav,seven\n")  # no prompt or task column needed
    assert [(e.prompt, e.text) for e in read_manifest(csv, prompt=ASK)[0]] == [(ASK, "seven")]


def test_recipe_prompt_reaches_an_adapters_rows(tmp_path):
    from pengi_kit.data.adapters import prepare

    root = tmp_path / "fsdd"
    (root / "recordings").mkdir(parents=True)
    for name in ("3_jackson_0.wav", "7_theo_12.wav"):
        sf.write(root / "recordings" / name, np.zeros(800, np.float32), 8000)
    prepare("free-spoken-digit", root, tmp_path / "digits.jsonl")
    raw = tiny_recipe(tmp_path / "run")
    raw["data"].update(train=[{"manifest": str(tmp_path / "digits.jsonl"), "prompt": ASK}], valid="")
    recipe = from_dict(raw)
    dataset = build_dataset(recipe, "train", 16000, 0.5)
    items = [dataset[i] for i in range(len(dataset))]
    assert [(it["prompt"], it["text"], it["task"]) for it in items] == [(ASK, "three", "qa"), (ASK, "seven", "qa")]


@pytest.mark.parametrize("entry, message", [
    ({"prompt": "  "}, r"data.train\[0\].prompt: empty"),
    ({"prompt": ASK, "templates": {"qa": "q {question}"}}, "prompt and templates together"),
    ({"promt": ASK}, "did you mean 'prompt'"),
    ({"prompt": 3}, r"data.train\[0\].prompt"),
])
def test_bad_prompt_is_one_line(tmp_path, entry, message):
    raw = tiny_recipe(tmp_path)
    raw["data"]["train"] = [{"manifest": "m.jsonl", **entry}]
    with pytest.raises(RecipeError, match=message) as info:
        from_dict(raw)
    assert "\n" not in str(info.value)


def test_shards_refuse_a_prompt(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "train-000000.tar").write_bytes(b"")
    raw = tiny_recipe(tmp_path / "run")
    raw["data"].update(train=[{"manifest": str(tmp_path / "shards"), "prompt": ASK}], valid="")
    with pytest.raises(RecipeError, match="hold their prompts already, so prompt cannot apply"):
        build_dataset(from_dict(raw), "train", 16000, 0.5)
