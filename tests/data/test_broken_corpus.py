"""Training on a corpus with every kind of broken input: 'skip' reports each one and finishes,
'fail' stops at the first one, naming it."""

from __future__ import annotations

import json
import re

import pytest

from pengi_kit.engine.trainer import Trainer, TrainingError
from pengi_kit.errors import ManifestError
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

from corpora import make_broken_corpus

MAX_SECONDS = 5.0
BATCH = 8


def _recipe(tmp_path, manifest, on_error):
    raw = tiny_recipe(tmp_path / "run", train={"batch_size": BATCH, "max_steps": 0, "epochs": 1})
    raw["data"].update(train=str(manifest), valid="", on_error=on_error, max_seconds=MAX_SECONDS)
    return from_dict(raw)


@pytest.fixture
def corpus(tmp_path):
    manifest, kinds, rows = make_broken_corpus(tmp_path / "corpus", max_seconds=MAX_SECONDS)
    assert len(kinds) >= 20 and rows % BATCH == 0  # every row is drawn in the one epoch
    return manifest, kinds, rows


def _reported(kind, messages):
    hits = [m for m in messages if kind.name in m and re.search(kind.pattern, m)]
    assert len(hits) == 1, f"{kind.kind}: expected one report naming {kind.name!r}, got {hits or messages}"
    assert "\n" not in hits[0]
    return hits[0]


def test_skip_reports_every_problem_and_finishes(tmp_path, corpus, capsys):
    manifest, kinds, rows = corpus
    trainer = Trainer(_recipe(tmp_path, manifest, "skip"), progress=False)
    assert trainer.steps_per_epoch == rows // BATCH
    path = trainer.fit()
    assert path.name == f"step-{rows // BATCH:08d}" and (path / "model.safetensors").exists()

    err = capsys.readouterr().err
    skipped = [line.removeprefix("pengi-kit: skipped: ") for line in err.splitlines() if "skipped: " in line]
    listed = err.split(f"epoch 0: {len(kinds)} example(s) skipped so far:")[1].splitlines()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [e for r in records if r.get("event") == "skipped_examples" for e in r["errors"]]
    for kind in kinds:
        message = _reported(kind, skipped)
        assert _reported(kind, logged) == message  # the same line in stderr and in metrics.jsonl
        assert any(message in line for line in listed), f"{kind.kind} missing from the end-of-epoch list"
    assert len(skipped) == len(logged) == len(kinds)  # nothing else, nothing twice
    epoch_end = [r for r in records if r.get("event") == "epoch_end"]
    assert epoch_end == [{**epoch_end[0], "epoch": 0, "skipped_examples": len(kinds)}]
    assert any("loss" in r for r in records)
    assert not any(r.get("event") == "nonfinite" for r in records)  # a skipped example is not a bad step


def test_fail_stops_at_the_first_bad_manifest_line(tmp_path, corpus):
    manifest, kinds, _ = corpus
    first = next(k for k in kinds if k.name.startswith("manifest.jsonl:"))
    with pytest.raises(ManifestError) as err:
        Trainer(_recipe(tmp_path, manifest, "fail"), progress=False)
    assert first.name in str(err.value) and re.search(first.pattern, str(err.value))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_fail_stops_at_the_first_bad_clip(tmp_path, corpus):
    manifest, kinds, _ = corpus
    lines = manifest.read_bytes().split(b"\n")
    bad_lines = {int(k.name.split(":")[1]) for k in kinds if k.name.startswith("manifest.jsonl:")}
    clean = manifest.with_name("clips_only.jsonl")  # only the bad clips are left to find
    clean.write_bytes(b"\n".join(line for n, line in enumerate(lines, 1) if n not in bad_lines))
    trainer = Trainer(_recipe(tmp_path, clean, "fail"), progress=False)
    first_bad = next((i, b["errors"][0]) for i, b in enumerate(trainer.loader.epoch(0)) if b["errors"])
    with pytest.raises(TrainingError) as err:
        trainer.fit()
    message = str(err.value)
    assert message.startswith(first_bad[1]) and "data.on_error = 'fail'" in message and "\n" not in message
    assert any(k.name in message and re.search(k.pattern, message) for k in kinds), message
    assert trainer.step == first_bad[0]  # no step on the batch that held it


def test_bad_validation_clips_are_reported_once(tmp_path):
    from corpora import tone, write

    write(tmp_path / "good.wav", tone(0.5), subtype="PCM_16")
    (tmp_path / "bad.wav").write_bytes(b"RIFF junk")
    manifest = tmp_path / "valid.jsonl"
    manifest.write_text("".join(json.dumps({"audio": name, "task": "caption", "text": "a tone"}) + "\n"
                                for name in ("good.wav", "bad.wav")))
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 2, "eval_every": 1})
    raw["data"]["valid"] = str(manifest)
    Trainer(from_dict(raw), progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in records if "valid_loss" in r) >= 2
    logged = [e for r in records if r.get("event") == "skipped_examples" for e in r["errors"]]
    assert len(logged) == 1 and "valid.jsonl:2:" in logged[0] and "bad.wav: unreadable audio header" in logged[0]
