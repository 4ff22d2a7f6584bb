"""Conversation files: the four formats read, written back and crossed, detection, and one
test per kind of bad row (collected with on_error="skip", raised with "fail")."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pengi_kit.data.conversations import (
    FORMATS, InlineAudio, detect_format, is_conversation_file, read_conversations, write_conversations)
from pengi_kit.errors import ManifestError


def wav(hz: float) -> bytes:
    """0.1 s of a sine at 16 kHz, as WAV bytes."""
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * hz * np.arange(1600) / 16000), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


WAV = {"a": wav(440), "b": wav(660), "c": wav(880)}
SYSTEM = "You are a careful listener."
# What every file below says: (messages, clips in order); row 3 places clip a twice.
EXPECTED = [
    ((("system", SYSTEM), ("user", "<audio><audio>Which is louder?"), ("assistant", "The second.")), "ab"),
    ((("user", "<audio>What is it?"), ("assistant", "A dog."), ("user", "And this one?<audio>"),
      ("assistant", "A cat.")), "cb"),
    ((("user", "<audio> then <audio>, and <audio> again?"), ("assistant", "Yes.")), "aba"),
]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def audio(clip: str) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV[clip]).decode(), "format": "wav"}}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


ROWS = {
    "llama-factory": [
        {"messages": [{"role": "system", "content": SYSTEM}, user("<audio><audio>Which is louder?"),
                      bot("The second.")], "audios": ["clips/a.wav", "clips/b.wav"]},
        {"messages": [user("<audio>What is it?"), bot("A dog."), user("And this one?<audio>"), bot("A cat.")],
         "audios": ["clips/c.wav", "clips/b.wav"]},
        {"messages": [user("<audio> then <audio>, and <audio> again?"), bot("Yes.")],
         "audios": ["clips/a.wav", "clips/b.wav", "clips/a.wav"]},
    ],
    "sharegpt": [
        {"system": SYSTEM, "conversations": [{"from": "human", "value": "<audio><audio>Which is louder?"},
                                             {"from": "gpt", "value": "The second."}],
         "audios": ["clips/a.wav", "clips/b.wav"]},
        {"conversations": [{"from": "human", "value": "<audio>What is it?"}, {"from": "gpt", "value": "A dog."},
                           {"from": "human", "value": "And this one?<audio>"}, {"from": "gpt", "value": "A cat."}],
         "audios": ["clips/c.wav", "clips/b.wav"]},
        {"conversations": [{"from": "human", "value": "<audio> then <audio>, and <audio> again?"},
                           {"from": "gpt", "value": "Yes."}], "audios": ["clips/a.wav", "clips/b.wav", "clips/a.wav"]},
    ],
    "af3": [
        {"sound": ["clips/a.wav", "clips/b.wav"], "conversations": [
            {"from": "system", "value": SYSTEM}, {"from": "human", "value": "<sound><sound>Which is louder?"},
            {"from": "gpt", "value": "The second."}]},
        {"sound": ["clips/c.wav", "clips/b.wav"], "conversations": [
            {"from": "human", "value": "<sound-1>What is it?"}, {"from": "gpt", "value": "A dog."},
            {"from": "human", "value": "And this one?<sound-2>"}, {"from": "gpt", "value": "A cat."}]},
        {"sound": ["clips/a.wav", "clips/b.wav"], "conversations": [
            {"from": "human", "value": "<sound-1> then <sound-2>, and <sound-1> again?"},
            {"from": "gpt", "value": "Yes."}]},
    ],
    "openai": [
        {"messages": [{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": [audio("a"), audio("b"), text("Which is louder?")]},
                      bot("The second.")]},
        {"messages": [{"role": "user", "content": [audio("c"), text("What is it?")]}, bot("A dog."),
                      {"role": "user", "content": [text("And this one?"), audio("b")]}, bot("A cat.")]},
        {"messages": [{"role": "user", "content": [audio("a"), text(" then "), audio("b"), text(", and "),
                                                   audio("a"), text(" again?")]}, bot("Yes.")]},
    ],
}


def write(path: Path, *lines: dict | list | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, fmt):
    path = write(tmp_path / "data" / "in.jsonl", *ROWS[fmt])
    conversations, errors = read_conversations(path, format=fmt)
    assert errors == [] and [c.line for c in conversations] == [1, 2, 3]
    for conv, (messages, clips) in zip(conversations, EXPECTED):
        assert conv.messages == messages
        assert conv.audios == tuple(InlineAudio(WAV[c], "wav") if fmt == "openai"
                                    else tmp_path / "data" / "clips" / f"{c}.wav" for c in clips)
    assert conversations[0].source == path and conversations[0].answers() == ["The second."]
    for name in ("out.jsonl", "out.json"):
        out = tmp_path / "data" / name
        assert write_conversations(out, conversations, fmt) == 3
        again, errors = read_conversations(out, format=fmt)
        assert errors == [] and again == conversations
    assert [c.line for c in again] == ["item 1", "item 2", "item 3"]


def test_cross_format_from_llama_factory(tmp_path):
    original, _ = read_conversations(write(tmp_path / "lf.jsonl", *ROWS["llama-factory"]))
    for fmt, name in (("sharegpt", "sg.jsonl"), ("af3", "af3.json")):
        write_conversations(tmp_path / name, original, fmt)
        again, errors = read_conversations(tmp_path / name)  # detected from the written keys
        assert errors == [] and again == original
    third = json.loads((tmp_path / "af3.json").read_text())[2]
    assert third["sound"] == ["clips/a.wav", "clips/b.wav"]  # a clip placed twice is listed once
    assert third["conversations"][0]["value"] == "<sound-1> then <sound-2>, and <sound-1> again?"


@pytest.mark.parametrize("fmt", FORMATS)
def test_detects_each_format(tmp_path, fmt):
    assert [detect_format(row) for row in ROWS[fmt]] == [fmt] * 3
    path = write(tmp_path / "in.jsonl", *ROWS[fmt])
    assert read_conversations(path) == read_conversations(path, format=fmt)


@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_ambiguous_messages_are_refused(tmp_path, on_error):
    row = {"messages": [user("hello"), bot("hi")]}
    assert detect_format(row) is None
    path = write(tmp_path / "in.jsonl", row, ROWS["llama-factory"][0])
    with pytest.raises(ManifestError, match=r"in\.jsonl:1: cannot tell the conversation format.*format = "):
        read_conversations(path, on_error)


GOOD = {"llama-factory": {"messages": [user("<audio>What is it?"), bot("A dog.")], "audios": ["a.wav"]},
        "af3": ROWS["af3"][2], "openai": ROWS["openai"][1]}
BAD = {  # kind: (format of the good rows, bad row, what its message says)
    "missing-placeholder": ("llama-factory", {"messages": [user("<audio>hi"), bot("x")], "audios": ["a.wav", "b.wav"]},
                            "1 <audio> placeholders for 2 clips"),
    "extra-placeholder": ("llama-factory", {"messages": [user("<audio><audio>hi"), bot("x")], "audios": ["a.wav"]},
                          "2 <audio> placeholders for 1 clips"),
    "unknown-role": ("llama-factory", {"messages": [{"role": "usr", "content": "<audio>hi"}, bot("x")],
                                       "audios": ["a.wav"]},
                     "message 1: unknown role 'usr' (use one of system, user, assistant; did you mean 'user'?)"),
    "role-not-a-string": ("llama-factory", {"messages": [{"role": 5, "content": "<audio>hi"}, bot("x")],
                                            "audios": ["a.wav"]}, "message 1: 'role' is int, not a string"),
    "assistant-first": ("llama-factory", {"messages": [bot("x"), user("<audio>hi")], "audios": ["a.wav"]},
                        "starts with an assistant turn"),
    "empty": ("llama-factory", {"messages": [], "audios": []}, "empty conversation"),
    "system-not-first": ("llama-factory", {"messages": [user("hi"), {"role": "system", "content": "s"}, bot("x")]},
                         "message 2: a system message after the first"),
    "audio-in-assistant": ("llama-factory", {"messages": [user("hi"), bot("<audio>")], "audios": ["a.wav"]},
                           "message 2: audio in the assistant's turn"),
    "af3-sound-3-of-2": ("af3", {"sound": ["a.wav", "b.wav"], "conversations": [
        {"from": "human", "value": "<sound-1><sound-2><sound-3>"}, {"from": "gpt", "value": "x"}]},
        "<sound-3> but the row has 2 sounds"),
    "af3-never-placed": ("af3", {"sound": ["a.wav", "b.wav"], "conversations": [
        {"from": "human", "value": "<sound-1> twice <sound-1>"}, {"from": "gpt", "value": "x"}]},
        "sound 2 is never placed"),
    "af3-from-not-a-string": ("af3", {"sound": ["a.wav"], "conversations": [
        {"from": ["human"], "value": "<sound>"}, {"from": "gpt", "value": "x"}]}, "message 1: 'from' is list"),
    "openai-input-audio-not-an-object": ("openai", {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": "AAAA"}]}, bot("x")]}, "message 1: input_audio is not an object"),
    "openai-not-base64": ("openai", {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}}]}, bot("x")]},
        "message 1: input_audio data is not base64"),
    "invalid-json": ("llama-factory", '{"messages": [', "invalid JSON"),
    "not-an-object": ("llama-factory", '["a.wav", "hello"]', "expected a JSON object, got"),
    "no-answer": ("llama-factory", {"messages": [user("<audio>hi")], "audios": ["a.wav"]}, "no assistant turn"),
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_row(tmp_path, kind):
    fmt, bad, reason = BAD[kind]
    path = write(tmp_path / "in.jsonl", GOOD[fmt], bad, GOOD[fmt])
    conversations, errors = read_conversations(path, "skip")
    assert len(errors) == 1 and errors[0].startswith(f"{path}:2: ") and reason in errors[0], errors
    assert [c.line for c in conversations] == [1, 3]
    with pytest.raises(ManifestError) as raised:
        read_conversations(path, "fail")
    assert str(raised.value) == errors[0]


def test_bad_items_of_a_json_list(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps([GOOD["llama-factory"], [1], {"messages": []}, GOOD["llama-factory"]]))
    conversations, errors = read_conversations(path, "skip")
    assert [c.line for c in conversations] == ["item 1", "item 4"]
    assert errors == [f"{path}:item 2: expected an object, got list",
                      f"{path}:item 3: empty conversation (give at least a user turn and an assistant turn)"]
    with pytest.raises(ManifestError, match=r"^.*in\.json:item 2: expected an object, got list$"):
        read_conversations(path, "fail")


def test_no_answer_is_accepted_when_none_is_needed(tmp_path):
    path = write(tmp_path / "in.jsonl", BAD["no-answer"][1])
    conversations, errors = read_conversations(path, "skip", need_answer=False)
    assert errors == [] and conversations[0].messages == (("user", "<audio>hi"),)
    assert conversations[0].audios == (tmp_path / "a.wav",) and conversations[0].answers() == []


def test_a_clip_listed_twice_in_af3_may_be_placed_by_either_number(tmp_path):
    row = {"sound": ["a.wav", "a.wav"], "conversations": [{"from": "human", "value": "<sound-1><sound-2>"},
                                                          {"from": "gpt", "value": "x"}]}
    conversations, errors = read_conversations(write(tmp_path / "in.jsonl", row), "skip")
    assert errors == [] and conversations[0].audios == (tmp_path / "a.wav",) * 2


def test_is_conversation_file(tmp_path):
    assert is_conversation_file(write(tmp_path / "list.json", ROWS["af3"]))
    assert is_conversation_file(write(tmp_path / "lf.jsonl", "", *ROWS["llama-factory"]))
    assert is_conversation_file(write(tmp_path / "sg.jsonl", *ROWS["sharegpt"]))
    assert not is_conversation_file(write(tmp_path / "manifest.jsonl", {"audio": "a.wav", "text": "a dog barks"}))
    assert not is_conversation_file(tmp_path / "missing.jsonl")


def test_data_check_reads_conversation_files(tmp_path):
    """`data check` on conversations: its bad rows, a missing clip (once, with the rows that use it),
    and a clip held in the file that does not decode are problems; good clips are counted."""
    from pengi_kit.data.check import check_manifest

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(WAV["a"])
    rows = [{"messages": [user("<audio><audio>same?"), bot("no")], "audios": ["clips/a.wav", "clips/gone.wav"]},
            {"messages": [user("hi")], "audios": []},
            {"messages": [user("<audio>again?"), bot("yes")], "audios": ["clips/gone.wav"]}]
    report = check_manifest(write(tmp_path / "lf.jsonl", *rows))
    assert report.rows == 2 and report.clips == 2 and len(report.durations) == 1
    assert [p.split(": ")[0] for p in report.problems] == [f"{tmp_path / 'lf.jsonl'}:1", f"{tmp_path / 'lf.jsonl'}:2"]
    assert "gone.wav" in report.problems[0] and "[and 1 more row of this clip]" in report.problems[0]
    assert "no assistant turn" in report.problems[1]
    broken = {"messages": [{"role": "user", "content": [audio("a"), text("and?")]}, bot("x")]}
    broken["messages"][0]["content"][0]["input_audio"]["data"] = base64.b64encode(b"RIFF0000WAVEjunk").decode()
    report = check_manifest(write(tmp_path / "oa.jsonl", broken))
    assert len(report.problems) == 1 and report.problems[0].startswith(f"{tmp_path / 'oa.jsonl'}:1: ")
