"""Manifests: good rows, every kind of bad line in both modes, and writing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pengi_kit.data.manifest import Example, read_manifest, write_manifest
from pengi_kit.errors import ManifestError

GOOD = {"audio": "a.wav", "prompt": "generate audio caption", "text": "a dog barks"}


def jsonl(tmp_path: Path, *lines: str | bytes, name: str = "manifest.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_reads_good_rows(tmp_path):
    path = jsonl(
        tmp_path,
        json.dumps(GOOD),
        "",
        "   ",
        json.dumps({"audio": "/abs/b.flac", "task": "qa", "question": "is it loud?", "text": "yes",
                    "start": 1, "end": 2.5}),
        json.dumps({"audio": "a.wav", "task": "caption", "text": "a dog", "start": None, "id": 7}),
        json.dumps({"audio": "c.wav", "task": "speech_emotion", "prompt": "the mood is", "text": "sad"}),
    )
    examples, errors = read_manifest(path)
    assert errors == []
    assert [e.line for e in examples] == [1, 4, 5, 6]
    a, b, c, d = examples
    assert a == Example(tmp_path / "a.wav", "generate audio caption", "a dog barks", None, None, None, 1, path)
    assert b.audio == Path("/abs/b.flac") and b.prompt == "question: is it loud?"
    assert (b.start, b.end, b.task) == (1.0, 2.5, "qa")
    assert c.audio == a.audio and c.prompt == "generate audio caption"  # several rows per clip
    assert (d.prompt, d.task) == ("the mood is", "speech_emotion")  # prompt wins, task labels


BAD_LINES = [
    ("{not json", "invalid JSON"),
    (b'{"audio": "\xff\xfe.wav", "prompt": "p", "text": "t"}', r"not valid UTF-8 \(byte 0xff at column 12\)"),
    ("[1, 2]", "expected a JSON object, got an array"),
    ('"just text"', "expected a JSON object, got a string"),
    ('{"prompt": "p", "text": "t"}', "missing or empty 'audio'"),
    ('{"path": "a.wav", "prompt": "p", "text": "t"}', "missing or empty 'audio'"),
    ('{"audio": "a.wav", "prompt": "p"}', "missing or empty 'text'"),
    ('{"audio": "a.wav", "prompt": "p", "txt": "t"}', r"missing or empty 'text' \(rename 'txt' to 'text'; add"),
    ('{"audio": "a.wav", "text": "t"}', "missing 'prompt' or 'task' \\(add a literal prompt, or a task: caption, qa"),
    ('{"audio": "a.wav", "promt": "p", "text": "t"}', "missing 'prompt' or 'task' \\(rename 'promt' to 'prompt'"),
    ('{"audio": 5, "prompt": "p", "text": "t"}', "'audio' must be a string, got a number"),
    ('{"audio": "a.wav", "prompt": "p", "text": ["t", "u"]}', "'text' must be a string, got an array"),
    ('{"audio": "a.wav", "prompt": "p", "text": "t", "start": "1.5"}', "'start' must be a number of seconds"),
    ('{"audio": "a.wav", "prompt": "p", "text": "t", "end": true}', "'end' must be a number of seconds"),
    ('{"audio": "a.wav", "prompt": "p", "text": "t", "start": -1}', "'start' is -1"),
    ('{"audio": "a.wav", "task": "captoin", "text": "t"}', "unknown task 'captoin' \\(did you mean 'caption'"),
    ('{"audio": "a.wav", "task": "emotion", "prompt": "p", "text": "t"}', "unknown task 'emotion'"),
    ('{"audio": "a.wav", "task": "qa", "text": "t"}', "task 'qa' needs field 'question'"),
    ('{"audio": "a.wav", "prompt": "p", "text": "t", "start": 3, "end": 2}', "start 3 is not before end 2"),
    ('{"audio": "a.wav", "prompt": "p", "text": "t", "start": 2, "end": 2}', "start 2 is not before end 2"),
]


@pytest.mark.parametrize("bad,pattern", BAD_LINES, ids=[p.split(" ")[0] + str(i) for i, (_, p) in enumerate(BAD_LINES)])
def test_bad_line_fails_with_file_and_line(tmp_path, bad, pattern):
    path = jsonl(tmp_path, json.dumps(GOOD), "", bad, json.dumps(GOOD))
    with pytest.raises(ManifestError, match=pattern) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and "\n" not in message
    assert message.endswith(")")  # every message says the fix in brackets


@pytest.mark.parametrize("bad,pattern", BAD_LINES, ids=[p.split(" ")[0] + str(i) for i, (_, p) in enumerate(BAD_LINES)])
def test_bad_line_skipped_and_reported(tmp_path, bad, pattern):
    path = jsonl(tmp_path, json.dumps(GOOD), bad, json.dumps(GOOD))
    examples, errors = read_manifest(path, on_error="skip")
    assert [e.line for e in examples] == [1, 3]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:2: ")
    assert re.search(pattern, errors[0]), errors[0]


def test_skip_collects_every_bad_line(tmp_path):
    path = jsonl(tmp_path, "{", json.dumps(GOOD), b"\xc3(", "[]", json.dumps(GOOD), "{}")
    examples, errors = read_manifest(path, on_error="skip")
    assert [e.line for e in examples] == [2, 5]
    assert [e.removeprefix(f"{path}:").split(":")[0] for e in errors] == ["1", "3", "4", "6"]


def test_crlf_and_bom_are_accepted(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + json.dumps(GOOD).encode() + b"\r\n")
    examples, errors = read_manifest(path)
    assert len(examples) == 2 and errors == []


def test_file_level_problems(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "missing.jsonl")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"unknown manifest type '\.txt'"):
        read_manifest(tmp_path / "m.txt", on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        read_manifest(tmp_path / "m.txt", on_error="ignore")


# --- CSV -------------------------------------------------------------------------------


def csv_file(tmp_path: Path, text: str | bytes, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_csv_good_rows(tmp_path):
    path = csv_file(
        tmp_path,
        "audio,prompt,task,question,text,start,end\n"
        "a.wav,generate audio caption,,,\"a dog, barking\",,\n"
        "\n"
        "b.wav,,qa,\"is it\nraining?\",yes,0.5,2\n"
        "c.wav,,caption,,rain,,\n",
    )
    examples, errors = read_manifest(path)
    assert errors == []
    assert [e.line for e in examples] == [2, 4, 6]
    a, b, c = examples
    assert (a.audio, a.prompt, a.text, a.start) == (tmp_path / "a.wav", "generate audio caption", "a dog, barking", None)
    assert (b.prompt, b.start, b.end, b.task) == ("question: is it\nraining?", 0.5, 2.0, "qa")
    assert c.prompt == "generate audio caption"


def test_tsv(tmp_path):
    path = csv_file(tmp_path, "audio\ttask\ttext\na.wav\tcaption\tx, y\n", name="m.tsv")
    (example,), _ = read_manifest(path)
    assert example.text == "x, y"


@pytest.mark.parametrize(
    "header,pattern",
    [("audio,text\n", "lacks column 'prompt or task'"), ("path,prompt,text\n", "lacks column 'audio'"),
     ("audio,prompt,txt\n", r"lacks column 'text' \(rename 'txt' to 'text'; the header"),
     ("audio,prompt,text,text\n", "repeats column 'text'")],
)
def test_csv_missing_columns_fail_in_both_modes(tmp_path, header, pattern):
    path = csv_file(tmp_path, header + "a.wav,p,t\n")
    for mode in ("fail", "skip"):
        with pytest.raises(ManifestError, match=pattern) as info:
            read_manifest(path, on_error=mode)
        assert str(info.value).startswith(f"{path}:1: ")


CSV_BAD = [
    ("a.wav,p\n", "2 fields but the header has 3"),
    ("a.wav,p,t,extra\n", "4 fields but the header has 3"),
    (",p,t\n", "missing or empty 'audio'"),
    ("a.wav,p,\n", "missing or empty 'text'"),
    (b"a.wav,p,caf\xe9\n", r"not valid UTF-8 \(byte 0xe9 in column 'text'\)"),
]


@pytest.mark.parametrize("row,pattern", CSV_BAD)
def test_csv_bad_rows(tmp_path, row, pattern):
    body = row if isinstance(row, bytes) else row.encode()
    path = csv_file(tmp_path, b"audio,prompt,text\na.wav,p,t\n" + body + b"b.wav,p,t\n")
    with pytest.raises(ManifestError, match=pattern) as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}:3: ")
    examples, errors = read_manifest(path, on_error="skip")
    assert [e.line for e in examples] == [2, 4] and len(errors) == 1 and errors[0].startswith(f"{path}:3: ")


def test_csv_bad_numbers(tmp_path):
    path = csv_file(tmp_path, "audio,prompt,text,start,end\na.wav,p,t,abc,\nb.wav,p,t,nan,\nc.wav,p,t,4,1\n")
    _, errors = read_manifest(path, on_error="skip")
    assert len(errors) == 3
    assert "'start' must be a number of seconds, got 'abc'" in errors[0]
    assert "'start' is nan" in errors[1]
    assert "start 4 is not before end 1" in errors[2]


# --- writing ---------------------------------------------------------------------------


def test_write_then_read_round_trips(tmp_path):
    source = jsonl(
        tmp_path,
        json.dumps({"audio": "clips/a.wav", "task": "qa", "question": "loud?", "text": "yes", "start": 0.5}),
        json.dumps({"audio": "/elsewhere/b.wav", "prompt": "describe", "text": "rain", "end": 3}),
    )
    examples, _ = read_manifest(source)
    out = tmp_path / "copy.jsonl"
    assert write_manifest(out, examples) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"audio": "clips/a.wav", "prompt": "question: loud?", "task": "qa", "question": "loud?",
                       "text": "yes", "start": 0.5}  # the row's other fields are kept
    again, errors = read_manifest(out)
    assert errors == []
    for before, after in zip(examples, again):
        assert (before.audio, before.prompt, before.text, before.start, before.end, before.task, before.fields) == (
            after.audio, after.prompt, after.text, after.start, after.end, after.task, after.fields)


def test_write_dicts_and_rejects_other_things(tmp_path):
    out = tmp_path / "sub" / "d.jsonl"
    write_manifest(out, [{"audio": Path("x.wav"), "prompt": "p", "text": "é"}])
    assert json.loads(out.read_text(encoding="utf-8")) == {"audio": "x.wav", "prompt": "p", "text": "é"}
    with pytest.raises(TypeError, match="Example objects or dicts"):
        write_manifest(out, ["x.wav"])
    assert out.exists() and not list(out.parent.glob(".*.tmp"))  # old file kept, no temp left
