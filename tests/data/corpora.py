"""Small corpora for data tests: good clips, and every kind of broken input mixed in."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def tone(seconds: float, sr: int = SR, freq: float = 440.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write(path: Path, wav: np.ndarray, sr: int = SR, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, sr, **kw)
    return path


def patch(path: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


@dataclass
class Broken:
    """One kind of bad input: what it is, and a regex its one-line report must match."""

    kind: str
    pattern: str
    name: str  # a file name or manifest-line marker the report names


def make_broken_corpus(root: Path, good: int = 24, max_seconds: float = 5.0) -> tuple[Path, list[Broken], int]:
    """A JSONL manifest of ``good`` good rows with every kind of broken input mixed in.

    Returns (manifest, the broken kinds in manifest order, rows that load), all clips
    at most 0.5 s except the over-long one (``max_seconds`` is the limit to train with).
    """
    clips = root / "clips"
    clips.mkdir(parents=True)
    good_rows = []
    for i in range(good):  # several formats, rates and channel counts; resampled on load
        kind = i % 4
        if kind == 0:
            p = write(clips / f"good{i}.wav", tone(0.5, freq=200 + 40 * i, seed=i), subtype="PCM_16")
        elif kind == 1:
            p = write(clips / f"good{i}.flac", tone(0.5, 44100, 200 + 40 * i, channels=2, seed=i), 44100)
        elif kind == 2:
            p = write(clips / f"good{i}.wav", tone(0.4, 22050, 200 + 40 * i, seed=i), 22050, subtype="FLOAT")
        else:
            p = write(clips / f"good{i}.ogg", tone(0.5, freq=200 + 40 * i, seed=i), subtype="VORBIS")
        task = ("caption", "classification", "qa")[i % 3]
        row = {"audio": f"clips/{p.name}", "task": task, "text": f"tone number {i}" + " long" * (i % 5)}
        if task == "qa":
            row["question"] = "is there a tone?"
        good_rows.append(json.dumps(row))

    def clip_row(name: str, **extra) -> str:
        return json.dumps({"audio": f"clips/{name}", "task": "caption", "text": "a broken clip", **extra})

    broken: list[tuple[Broken, str]] = []

    def bad_file(kind: str, pattern: str, name: str, **extra) -> None:
        broken.append((Broken(kind, pattern, name), clip_row(name, **extra)))

    bad_file("missing file", "audio file not found", "missing.wav")
    (clips / "empty.wav").write_bytes(b"")
    bad_file("zero-length file", r"empty \(0 bytes\)", "empty.wav")
    (clips / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00NOTAWAVE" + bytes(200))
    bad_file("corrupt header", "unreadable audio header", "junk.wav")
    (clips / "notes.flac").write_text("not audio at all\n" * 20)
    bad_file("text file named .flac", "unreadable audio header", "notes.flac")
    p = write(clips / "cut.wav", tone(0.5), subtype="PCM_16")
    p.write_bytes(p.read_bytes()[:-4000])
    bad_file("truncated WAV", "truncated", "cut.wav")
    p = write(clips / "cut.flac", tone(0.5), subtype="PCM_16")
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
    bad_file("truncated FLAC", "truncated|corrupt", "cut.flac")
    x = tone(0.5)
    x[1000] = np.nan
    write(clips / "nan.wav", x, subtype="FLOAT")
    bad_file("NaN samples", "NaN or infinite", "nan.wav")
    x = tone(0.5)
    x[2000:2010] = np.inf
    write(clips / "inf.wav", x, subtype="FLOAT")
    bad_file("infinite samples", "NaN or infinite", "inf.wav")
    write(clips / "loud.wav", tone(0.5) * 30000, subtype="FLOAT")
    bad_file("integer-scale float samples", r"far outside \[-1, 1\]", "loud.wav")
    patch(write(clips / "nochan.wav", tone(0.5), subtype="PCM_16"), 22, "<H", 0)
    bad_file("zero channels", "[Cc]hannel", "nochan.wav")
    patch(write(clips / "rate.wav", tone(0.5), subtype="PCM_16"), 24, "<I", 1)
    bad_file("absurd sample rate", "implausible sample rate", "rate.wav")
    write(clips / "long.wav", tone(max_seconds + 1, 8000), 8000, subtype="PCM_U8")
    bad_file("absurd length", "over the .* s limit", "long.wav")
    write(clips / "noframes.wav", np.zeros(0, np.float32))
    bad_file("zero frames", "no audio frames", "noframes.wav")
    (clips / "folder.wav").mkdir()
    bad_file("directory", "is a directory", "folder.wav")
    write(clips / "short.wav", tone(0.5), subtype="PCM_16")
    bad_file("segment starts past the end", "start 3 s is at or past the end", "short.wav", start=3.0)
    bad_file("segment ends past the end", "end 9 s is past the end of the file", "short.wav", start=0.1, end=9.0)

    def bad_line(kind: str, pattern: str, line: str | bytes) -> None:
        broken.append((Broken(kind, pattern, ""), line))

    bad_line("invalid JSON", "invalid JSON", '{"audio": "clips/good0.wav", "text": ')
    bad_line("not UTF-8", "not valid UTF-8", b'{"audio": "clips/good0.wav", "task": "caption", "text": "caf\xe9"}')
    bad_line("JSON array instead of an object", "expected a JSON object", '["clips/good0.wav", "a tone"]')
    bad_line("missing field 'text'", "missing or empty 'text'", '{"audio": "clips/good0.wav", "task": "caption"}')
    bad_line("missing field 'audio'", "missing or empty 'audio'", '{"task": "caption", "text": "a tone"}')
    bad_line("neither prompt nor task", "missing 'prompt' or 'task'", '{"audio": "clips/good0.wav", "text": "t"}')
    bad_line("unknown task", "unknown task 'captoin'", '{"audio": "clips/good0.wav", "task": "captoin", "text": "t"}')
    bad_line("template field missing", "needs field 'question'", '{"audio": "clips/good0.wav", "task": "qa", "text": "yes"}')
    bad_line("start after end", "is not before end", '{"audio": "clips/good0.wav", "task": "caption", "text": "t", '
             '"start": 0.4, "end": 0.1}')
    bad_line("negative start", "'start' is -1", '{"audio": "clips/good0.wav", "task": "caption", "text": "t", "start": -1}')
    bad_line("audio is not a string", "'audio' must be a string", '{"audio": 7, "task": "caption", "text": "t"}')

    # interleave: a bad row after every good one, in a fixed order
    lines: list[str | bytes] = []
    kinds: list[Broken] = []
    for i in range(max(len(good_rows), len(broken))):
        if i < len(good_rows):
            lines.append(good_rows[i])
        if i < len(broken):
            b, line = broken[i]
            if not b.name:
                b.name = f"manifest.jsonl:{len(lines) + 1}:"
            kinds.append(b)
            lines.append(line)
    manifest = root / "manifest.jsonl"
    manifest.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    loadable = len(good_rows) + sum(1 for b in kinds if not b.name.startswith("manifest.jsonl:"))
    return manifest, kinds, loadable
