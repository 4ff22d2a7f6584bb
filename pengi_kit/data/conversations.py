"""Conversations with audio: the rows of the chat layout (docs/data.md, "Conversations"),
read from the formats users keep them in.

A :class:`Conversation` is a list of messages ``{"role": "system" | "user" | "assistant",
"content": str}`` in which each ``<audio>`` (:data:`AUDIO`) stands for the next of the row's
clips, and those clips (paths, relative to the file unless absolute, or audio bytes held in
the file). A file holds one format, named by a recipe's ``format`` or detected from its first
row:

=================  ======================================================================
``llama-factory``  ``{"messages": [{"role", "content"}], "audios": [path, ...]}``: one
                   ``<audio>`` per clip, in order
``sharegpt``       ``{"conversations": [{"from": "human" | "gpt" | "system", "value"}],
                   "audios": [...], "system": "..."}`` (LLaMA-Factory's ShareGPT): as above
``af3``            ``{"sound": path | [path, ...], "conversations": [{"from", "value"}]}``
                   (Audio Flamingo 3): ``<sound>`` is the next clip, ``<sound-k>`` clip k
                   (from 1), which may come back
``openai``         ``{"messages": [...]}`` whose user contents are lists of parts
                   ``{"type": "text", "text"}`` and ``{"type": "input_audio", "input_audio":
                   {"data": <base64>, "format": "wav"}}``
=================  ======================================================================

Files are JSON Lines (``.jsonl``: a row per line) or JSON (``.json``: a list of rows). A bad
row becomes one message ``file:line: what (fix)`` (``file:item N`` in a JSON list), raised or
collected as :func:`pengi_kit.data.manifest.read_manifest` does. Nothing here imports torch.
"""
from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pengi_kit.data.manifest import _Bad, _jsonl_rows, _relative, collect, write_lines
from pengi_kit.errors import ManifestError

__all__ = ["AUDIO", "FORMATS", "Conversation", "InlineAudio", "detect_format", "is_conversation_file",
           "read_conversations", "single_turn", "write_conversations"]

AUDIO = "<audio>"
ROLES = ("system", "user", "assistant")
FORMATS = ("llama-factory", "sharegpt", "af3", "openai")
SUFFIXES = (".jsonl", ".json")
_FROM = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_SOUND = re.compile(r"<sound(?:-(\d+))?>")


def _known(value: Any, known: Iterable[str]) -> str:
    """``"use one of ...; did you mean '...'?"`` for a value that is not one of ``known``."""
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6) if isinstance(value, str) else []
    return f"use one of {', '.join(known)}" + (f"; did you mean '{close[0]}'?" if close else "")


@dataclass(frozen=True)
class InlineAudio:
    """Audio bytes held in the file (OpenAI's ``input_audio``), with their ``format`` ("wav", "mp3")."""

    data: bytes
    format: str


@dataclass(frozen=True)
class Conversation:
    """One row: ``messages`` (role, content) with an :data:`AUDIO` per clip, and the clips in order
    (a clip placed twice is listed twice)."""

    messages: tuple[tuple[str, str], ...]
    audios: tuple[Path | InlineAudio, ...]
    line: int | str = field(default=0, compare=False)  # where it was read from is not what it says
    source: Path = field(default=Path(""), compare=False)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def answers(self) -> list[str]:
        return [content for role, content in self.messages if role == "assistant"]


def single_turn(prompt: str, answer: str | None = None) -> list[dict[str, str]]:
    """Pengi's (clip, prompt, answer) as a conversation: the clip then the prompt in a user turn,
    and the answer, if any, in an assistant turn. The chat layout trains on manifests and answers
    ``generate`` through it."""
    messages = [{"role": "user", "content": AUDIO + prompt}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def check_messages(messages: list[tuple[str, str]], clips: int, need_answer: bool = True) -> None:
    """What every format must say, whatever its spelling: known roles, a system prompt only first,
    a user turn before any answer, audio in user turns only, one clip per :data:`AUDIO`."""
    if not messages:
        raise _Bad("empty conversation", "give at least a user turn and an assistant turn")
    for n, (role, content) in enumerate(messages):
        if role not in ROLES:
            raise _Bad(f"message {n + 1}: unknown role {role!r}", _known(role, ROLES))
        if role == "system" and n:
            raise _Bad(f"message {n + 1}: a system message after the first", "put the system prompt first")
        if AUDIO in content and role != "user":
            raise _Bad(f"message {n + 1}: audio in the {role}'s turn", "place clips in user turns")
    first = next((role for role, _ in messages if role != "system"), None)
    if first != "user":
        raise _Bad(f"the conversation starts with {'an assistant turn' if first else 'no user turn'}",
                   "begin with a user turn (after an optional system prompt)")
    if need_answer and not any(role == "assistant" for role, _ in messages):
        raise _Bad("no assistant turn, so nothing to learn", "add the answer as an assistant turn")
    placed = sum(content.count(AUDIO) for _, content in messages)
    if placed != clips:
        raise _Bad(f"{placed} {AUDIO} placeholders for {clips} clips",
                   f"write one {AUDIO} where each clip goes, in the order of the clips")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _list(row: dict[str, Any], key: str, fix: str) -> list[Any]:
    value = row.get(key)
    if not isinstance(value, list):
        raise _Bad(f"'{key}' {'is missing' if value is None else 'is not a list'}", fix)
    return value


def _paths(row: dict[str, Any], key: str, folder: Path) -> list[Path]:
    value = row.get(key, [])
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise _Bad(f"'{key}': expected a list of paths", f'write "{key}": ["clips/a.wav", ...]')
    return [folder / v for v in values]


def _turns(row: dict[str, Any], key: str, role_key: str, text_key: str) -> list[tuple[str, str]]:
    turns = _list(row, key, f'write "{key}": [{{"{role_key}": ..., "{text_key}": ...}}, ...]')
    out = []
    for n, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn:
            raise _Bad(f"message {n + 1}: expected an object with '{role_key}' and '{text_key}'")
        role = turn[role_key]
        if not isinstance(role, str):
            raise _Bad(f"message {n + 1}: '{role_key}' is {type(role).__name__}, not a string")
        out.append((role if role_key == "role" else _FROM.get(role, role), _text(turn.get(text_key), f"message {n + 1}")))
    return out


def content_text(content: Any, n: int, clips: list[Any], objects: bool = False) -> str:
    """Message ``n``'s content as one string with an :data:`AUDIO` where each clip goes, its clips
    appended to ``clips``: a string, or OpenAI's list of ``text`` and ``input_audio`` parts (and with
    ``objects``, :meth:`pengi_kit.api.Pengi.chat`'s ``{"type": "audio", "audio": <clip>}`` parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _Bad(f"message {n}: content is neither a string nor a list of parts")
    text = ""
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text += _text(part.get("text"), f"message {n}: a text part")
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise _Bad(f"message {n}: input_audio is not an object", 'write {"data": <base64>, "format": "wav"}')
            try:
                data = base64.b64decode(audio.get("data", ""), validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise _Bad(f"message {n}: input_audio data is not base64", "encode the file's bytes in base64") from None
            if not data:
                raise _Bad(f"message {n}: input_audio has no data")
            clips.append(InlineAudio(data, str(audio.get("format") or "wav")))
            text += AUDIO
        elif kind == "audio" and objects:
            clips.append(part.get("audio"))
            text += AUDIO
        else:
            raise _Bad(f"message {n}: unknown content part {kind!r}",
                       f"use 'text', {'audio, ' if objects else ''}and 'input_audio' parts")
    return text


def api_messages(conversation: Any,
                 part: Callable[[Any, int], Any] | None = None) -> tuple[list[dict[str, str]], list[Any]]:
    """A conversation of an API call (:meth:`pengi_kit.api.Pengi.chat`, the server's chat
    completions) as the chat layout reads it: each message's content one string with an
    :data:`AUDIO` where a clip goes (:func:`content_text`, ``audio`` parts of objects taken),
    and the clips in order. ``part`` rewrites each content part first (message number from 1).
    Raises ``_Bad``, one line."""
    if not isinstance(conversation, list) or not conversation:
        raise _Bad("messages must be a non-empty list of {\"role\": ..., \"content\": ...}")
    messages: list[dict[str, str]] = []
    clips: list[Any] = []
    for n, message in enumerate(conversation, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _Bad(f"message {n}: expected {{\"role\": ..., \"content\": ...}}, got {str(message)[:80]}")
        content = message["content"]
        if isinstance(content, str) and AUDIO in content:
            raise _Bad(f"message {n}: {AUDIO} in a text", "give each clip as a content part of its own")
        if part is not None and isinstance(content, list):
            content = [part(p, n) for p in content]
        messages.append({"role": message["role"], "content": content_text(content, n, clips, objects=True)})
    if messages[-1]["role"] == "assistant":
        raise _Bad("the conversation ends with an assistant turn", "end it with the user's turn to answer")
    check_messages([(m["role"], m["content"]) for m in messages], len(clips), need_answer=False)
    return messages, clips


def _af3(row: dict[str, Any], folder: Path) -> tuple[list[tuple[str, str]], list[Path]]:
    sounds = _paths(row, "sound", folder)
    messages, audios, placed, at = [], [], set(), 0
    for role, content in _turns(row, "conversations", "from", "value"):
        if AUDIO in content:
            raise _Bad(f"{AUDIO} in an af3 row", "Audio Flamingo 3 places clips with <sound> or <sound-k>")

        def place(match: re.Match[str]) -> str:
            nonlocal at
            if match.group(1) is None:
                k, at = at, at + 1
            else:
                k = int(match.group(1)) - 1
            if not 0 <= k < len(sounds):
                raise _Bad(f"{match.group(0)} but the row has {len(sounds)} sounds",
                           "number the sounds from 1, as listed in 'sound'")
            audios.append(sounds[k])
            placed.add(k)
            return AUDIO

        messages.append((role, _SOUND.sub(place, content)))
    unused = set(range(len(sounds))) - placed
    if unused:
        raise _Bad(f"sound {min(unused) + 1} is never placed", "place it with <sound-k>, or remove it from 'sound'")
    return messages, audios


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a row's keys say, or None when they do not tell."""
    if "sound" in row and "conversations" in row:
        return "af3"
    if "conversations" in row:
        return "sharegpt"
    messages = row.get("messages")
    if "audios" in row and messages is not None:
        return "llama-factory"
    if isinstance(messages, list) and any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                          and any(isinstance(p, dict) and p.get("type") == "input_audio"
                                                  for p in m["content"]) for m in messages):
        return "openai"
    return None


def _parse(row: dict[str, Any], fmt: str, folder: Path, need_answer: bool) -> Conversation:
    audios: list[Any]
    if fmt == "llama-factory":
        messages, audios = _turns(row, "messages", "role", "content"), _paths(row, "audios", folder)
    elif fmt == "sharegpt":
        messages, audios = _turns(row, "conversations", "from", "value"), _paths(row, "audios", folder)
        if row.get("system"):
            messages = [("system", _text(row["system"], "'system'")), *messages]
    elif fmt == "af3":
        messages, audios = _af3(row, folder)
    else:
        audios = []
        turns = _list(row, "messages", 'write "messages": [{"role": ..., "content": ...}, ...]')
        messages = []
        for n, turn in enumerate(turns, start=1):
            if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
                raise _Bad(f"message {n}: expected an object with a 'role' string and 'content'")
            messages.append((turn["role"], content_text(turn.get("content"), n, audios)))
    check_messages(messages, len(audios), need_answer)
    return Conversation(tuple(messages), tuple(audios))


def _rows(path: Path, raw: bytes) -> Iterator[tuple[int | str, dict[str, Any] | _Bad]]:
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl_rows(raw)
        return
    try:
        rows = json.loads(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a JSON file ({exc}); write a JSON list of rows, or .jsonl") from None
    if not isinstance(rows, list):
        raise ManifestError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    for n, row in enumerate(rows, start=1):
        yield f"item {n}", row if isinstance(row, dict) else _Bad(f"expected an object, got {type(row).__name__}")


def is_conversation_file(path: str | Path) -> bool:
    """Whether ``path`` holds conversations (a ``.json`` file, or a ``.jsonl`` whose first row has
    ``messages`` or ``conversations``) rather than Pengi's manifest rows."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return True
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return False
                return isinstance(row, dict) and ("messages" in row or "conversations" in row)
    return False


def read_conversations(path: str | Path, on_error: str = "fail", *, format: str | None = None,
                       need_answer: bool = True) -> tuple[list[Conversation], list[str]]:
    """The conversations of a ``.jsonl`` or ``.json`` file and, with ``on_error="skip"``, one
    message per bad row (``"fail"`` raises the first). ``format``: one of :data:`FORMATS`, or
    None to detect it from the first row. Clips are not opened here."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise ManifestError(f"{path}: unknown conversation format {format!r}; {_known(format, FORMATS)}")
    if path.suffix.lower() not in SUFFIXES:
        raise ManifestError(f"{path}: conversations are read from .jsonl or .json files, not '{path.suffix}'")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read it: {exc.strerror} (check the path)") from None
    fmt = format

    def parse(line: int | str, row: dict[str, Any]) -> Conversation:
        nonlocal fmt
        if fmt is None:
            fmt = detect_format(row)
            if fmt is None:
                raise ManifestError(f"{path}:{line}: cannot tell the conversation format from the keys "
                                    f"{sorted(row)}; name it: format = \"llama-factory\" (or "
                                    f"{', '.join(FORMATS[1:])}) in the recipe's data table")
        conversation = _parse(row, fmt, path.parent, need_answer)
        return Conversation(conversation.messages, conversation.audios, line, path)

    return collect(path, _rows(path, raw), parse, on_error)


def _clip_value(audio: Path | InlineAudio, folder: Path) -> str:
    if isinstance(audio, InlineAudio):
        raise ManifestError("a clip held in the file (OpenAI's input_audio) has no path to write; "
                            "write the conversations in the openai format")
    return _relative(audio, folder)


def _row(conv: Conversation, fmt: str, folder: Path) -> dict[str, Any]:
    if fmt == "llama-factory":
        return {"messages": conv.as_messages(), "audios": [_clip_value(a, folder) for a in conv.audios]}
    system = [c for r, c in conv.messages if r == "system"]
    turns = [(r, c) for r, c in conv.messages if r != "system"]
    if fmt == "sharegpt":
        row: dict[str, Any] = {"conversations": [{"from": {"user": "human", "assistant": "gpt"}[r], "value": c}
                                                 for r, c in turns], "audios": [_clip_value(a, folder) for a in conv.audios]}
        return {**row, "system": system[0]} if system else row
    if fmt == "af3":
        sounds = list(dict.fromkeys(conv.audios))  # a clip placed twice is listed once and numbered
        clips = iter(conv.audios)
        values = [re.sub(re.escape(AUDIO), lambda _: f"<sound-{sounds.index(next(clips)) + 1}>", c)
                  for _, c in conv.messages]
        return {"sound": [_clip_value(a, folder) for a in sounds],
                "conversations": [{"from": {"user": "human", "assistant": "gpt", "system": "system"}[r], "value": v}
                                  for (r, _), v in zip(conv.messages, values)]}
    clips = iter(conv.audios)
    messages: list[dict[str, Any]] = []
    for role, content in conv.messages:
        if AUDIO not in content:
            messages.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for n, text in enumerate(content.split(AUDIO)):
            if n:
                clip = next(clips)
                data, kind = ((clip.data, clip.format) if isinstance(clip, InlineAudio)
                              else (clip.read_bytes(), clip.suffix.lstrip(".").lower() or "wav"))
                parts.append({"type": "input_audio",
                              "input_audio": {"data": base64.b64encode(data).decode("ascii"), "format": kind}})
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": role, "content": parts})
    return {"messages": messages}


def write_conversations(path: str | Path, conversations: Iterable[Conversation], format: str) -> int:
    """Write conversations in ``format`` (a ``.jsonl`` file, or a JSON list for ``.json``), clips
    relative to the file's folder where they are inside it (the openai format holds the clips'
    bytes); returns the row count. Atomic, as :func:`~pengi_kit.data.manifest.write_manifest`."""
    path = Path(path)
    if format not in FORMATS:
        raise ManifestError(f"unknown conversation format {format!r}; {_known(format, FORMATS)}")
    rows = [_row(c, format, path.parent) for c in conversations]
    if path.suffix.lower() == ".json":
        write_lines(path, [json.dumps(rows, ensure_ascii=False, indent=1) + "\n"])
    else:
        write_lines(path, [json.dumps(r, ensure_ascii=False) + "\n" for r in rows])
    return len(rows)
