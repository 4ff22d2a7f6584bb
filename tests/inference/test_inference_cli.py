"""pengi-kit generate / describe over files, folders and manifests; output formats; bad
inputs reported in one line each and skipped."""
import csv
import io
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from pengi_kit.cli import main

RATE = 16000


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint):
    return str(untrained_checkpoint)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "clips" / "sub").mkdir(parents=True)
    for i, name in enumerate(["clips/a.wav", "clips/sub/b.flac", "long.wav"]):
        sf.write(root / name, np.random.default_rng(i).uniform(-0.5, 0.5, RATE * (2 if i == 2 else 1)), RATE)
    (root / "clips" / "notes.txt").write_text("not audio")
    (root / "clips" / "sub" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    rows = [{"audio": "long.wav", "prompt": "this is a sound of", "start": 0.5, "end": 1.0},
            {"audio": "long.wav", "task": "qa", "question": "is it loud?"},
            {"audio": "long.wav"},  # no prompt: gets --prompt
            {"prompt": "no audio here"},
            {"audio": "missing.wav", "prompt": "generate metadata"}]
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "m.csv").write_text("audio,prompt\nclips/a.wav,generate metadata\n")
    return root


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_generate_files_folders_manifests_and_bad_inputs(checkpoint, corpus):
    result = run("generate", checkpoint, corpus / "clips", corpus / "m.jsonl", corpus / "nope.wav",
                 "--format", "jsonl", "--no-progress")
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    skipped = [line for line in result.stderr.splitlines()]
    assert [(r["audio"].removeprefix(str(corpus) + "/"), r["prompt"], r.get("start")) for r in rows] == [
        ("clips/a.wav", "generate audio caption", None),
        ("clips/sub/b.flac", "generate audio caption", None),
        ("long.wav", "this is a sound of", 0.5),
        ("long.wav", "question: is it loud?", None),
        ("long.wav", "generate audio caption", None),
    ]
    assert all(isinstance(r["text"], str) for r in rows)
    assert len(skipped) == 4 and all(line.startswith("skipped: ") for line in skipped)
    for needle in ("m.jsonl:4: missing or empty 'audio'", "nope.wav: no such file", "broken.wav", "missing.wav"):
        assert sum(needle in line for line in skipped) == 1, (needle, skipped)
    assert "Traceback" not in result.output


def test_formats_out_file_prompts_and_json_alias(checkpoint, corpus, tmp_path):
    a = corpus / "clips" / "a.wav"
    text = run("generate", checkpoint, a, corpus / "m.csv", "--prompt", "generate audio caption")
    assert text.exit_code == 0, text.output
    lines = [line.split("\t") for line in text.stdout.splitlines()]
    assert [len(cols) for cols in lines] == [3, 3] and lines[1][1] == "generate metadata"  # prompts differ
    out = tmp_path / "r.csv"
    result = run("generate", checkpoint, a, "--prompt", "generate metadata", "--prompt", "this is a sound of",
                 "--format", "csv", "--out", out, "--beam-size", "2", "--method", "beam", "--compat", "pengi")
    assert result.exit_code == 0 and result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["prompt"] for r in rows] == ["generate metadata", "this is a sound of"] and list(rows[0]) == [
        "audio", "prompt", "text"]
    alias = run("generate", checkpoint, a, "--json", "--method", "greedy")
    assert json.loads(alias.stdout)["audio"] == str(a)
    single = run("generate", checkpoint, a)
    assert single.stdout.count("\t") == 1  # one prompt: audio and text only


def test_describe_and_nothing_usable(checkpoint, corpus):
    result = run("describe", checkpoint, corpus / "clips", "--format", "jsonl")
    assert result.exit_code == 1  # broken.wav skipped
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"audio", "caption", "metadata", "sound_events", "summary"}
    assert "this audio contains sound events:" in rows[0]["summary"]
    bad = run("generate", checkpoint, corpus / "nope.wav", corpus / "clips" / "sub" / "broken.wav")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert bad.stdout == "" and bad.stderr.count("\n") == 3 and bad.stderr.splitlines()[-1].startswith("error:")
    with_bad_option = run("generate", checkpoint, corpus / "clips" / "a.wav", "--top-p", "0")
    assert with_bad_option.exit_code != 0 and "top_p" in with_bad_option.output
