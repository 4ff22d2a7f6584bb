"""Manifests: one example per JSONL line or CSV row.

A row has ``audio`` (a path, relative to the manifest's folder unless absolute),
``text`` (the target), a ``prompt`` (literal text) and/or a ``task`` (a template name
from :mod:`pengi_kit.data.templates`, whose ``{fields}`` come from the row's other
keys, e.g. ``question``), and optional ``start``/``end`` in seconds. When both
``prompt`` and ``task`` are given the prompt is used and the task labels the example.
Several rows may share one clip. Example line::

    {"audio": "clips/a.flac", "task": "qa", "question": "is it raining?", "text": "yes"}

A bad line becomes one message ``manifest.jsonl:17: <what> (<fix>)``: raised as
:class:`ManifestError` with ``on_error="fail"``, collected and returned with
``on_error="skip"``. Problems with the whole file (missing, unknown type, bad CSV
header) raise in both modes.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from pengi_kit.data.templates import TEMPLATES, TemplateError, fill, render, template_fields
from pengi_kit.errors import ManifestError

__all__ = ["Example", "read_manifest", "write_manifest", "MANIFEST_SUFFIXES"]

_JSONL = (".jsonl", ".ndjson")
_CSV = {".csv": ",", ".tsv": "\t"}
MANIFEST_SUFFIXES = _JSONL + tuple(_CSV)
_RESERVED = ("audio", "text", "prompt", "task", "start", "end")


@dataclass(frozen=True)
class Example:
    """One (clip or segment, prompt, target) triple and where it was read from."""

    audio: Path
    prompt: str
    text: str
    start: float | None
    end: float | None
    task: str | None
    line: int
    source: Path
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the row's other keys


class _Bad(Exception):
    """A line-level problem: ``what`` and ``fix`` become ``file:line: what (fix)``."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        super().__init__(what if fix is None else f"{what} ({fix})")


def read_manifest(
    path: str | Path,
    on_error: str = "fail",
    *,
    task: str | None = None,
    templates: Mapping[str, str] | None = None,
    prompt: str | None = None,
    require_text: bool = True,
) -> tuple[list[Example], list[str]]:
    """Read a ``.jsonl``/``.ndjson`` or ``.csv``/``.tsv`` manifest.

    Returns the good examples and, with ``on_error="skip"``, one message per bad line
    (with ``"fail"`` the first bad line raises, so the list is empty). Blank lines are
    ignored. Audio files are not opened here.

    A dataset chooses its prompts with ``task`` (the task of rows that name neither a
    prompt nor a task) and ``templates`` (``{task: template}``, replacing the built-in
    template of a task or adding a new task, e.g. ``{"caption": "describe the sound"}``).
    ``prompt`` is the prompt of every row that has none of its own, whatever its task (which
    then only labels the row): one question for a whole dataset, no template needed. An empty
    ``prompt`` only lets rows without a prompt or task through (a tagger reads labels, not
    prompts); rows with a task still get its template.

    ``require_text=False`` reads inference manifests, whose rows need no target: a row
    without ``text`` gets ``""``.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(
            f"{path}: unknown manifest type '{path.suffix}' "
            "(use .jsonl with one JSON object per line, or .csv with a header row)"
        )
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found (check the path)") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror} (check the path)") from None

    from_csv = suffix in _CSV
    defaulted = task is not None or prompt is not None  # rows need neither a prompt nor a task column
    rows = _csv_rows(path, raw, _CSV[suffix], require_text, defaulted) if from_csv else _jsonl_rows(raw)
    return collect(path, rows, lambda line, row: _example(row, line, path, from_csv, task, templates or {},
                                                          require_text, prompt), on_error)


def collect(path: Path, rows: Iterable[tuple[Any, dict[str, Any] | _Bad]], parse: Any,
            on_error: str) -> tuple[list[Any], list[str]]:
    """``parse(line, row)`` of each row, and one message ``file:line: what (fix)`` per bad one: raised
    as :class:`ManifestError` with ``on_error="fail"``, collected with ``"skip"``."""
    out: list[Any] = []
    errors: list[str] = []
    for line, row in rows:
        try:
            if isinstance(row, _Bad):
                raise row
            out.append(parse(line, row))
        except _Bad as bad:
            message = f"{path}:{line}: {bad}"
            if on_error == "fail":
                raise ManifestError(message) from None
            errors.append(message)
    return out, errors


def _decode(data: bytes, where: str = "") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = where or f"at column {exc.start + 1}"
        raise _Bad(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} {at})", "save the manifest as UTF-8") from None


def _jsonl_rows(raw: bytes) -> Iterator[tuple[int, dict[str, Any] | _Bad]]:
    # Split bytes, not text, so one badly encoded line does not spoil the others.
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    for number, data in enumerate(raw.split(b"\n"), start=1):
        if not data.strip():
            continue
        try:
            text = _decode(data)
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _Bad(
                    f"invalid JSON: {exc.msg} at column {exc.colno}",
                    "write exactly one JSON object per line",
                ) from None
            if not isinstance(row, dict):
                raise _Bad(
                    f"expected a JSON object, got {_kind(row)}",
                    'write one {"audio": ..., "text": ...} object per line',
                )
            yield number, row
        except _Bad as bad:
            yield number, bad


def _csv_rows(path: Path, raw: bytes, delimiter: str, require_text: bool = True,
              defaulted: bool = False) -> Iterator[tuple[int, dict[str, Any] | _Bad]]:
    # surrogateescape keeps undecodable bytes as lone surrogates, found per row below.
    text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    seen = 0
    try:
        for cells in reader:
            first, seen = seen + 1, reader.line_num  # a quoted field may span lines
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                _check_header(path, first, header, require_text, defaulted)
                continue
            try:
                for name, cell in zip(header, cells):
                    if _has_surrogate(cell):
                        _decode(cell.encode("utf-8", "surrogateescape"), f"in column '{name}'")
                if len(cells) != len(header):
                    raise _Bad(
                        f"{len(cells)} fields but the header has {len(header)}",
                        "quote fields that contain the delimiter, and give every column",
                    )
                # An empty cell means the column does not apply to this row.
                yield first, {k: v for k, v in zip(header, cells) if v.strip() != ""}
            except _Bad as bad:
                yield first, bad
    except csv.Error as exc:
        raise ManifestError(f"{path}:{reader.line_num}: malformed CSV: {exc} (check the quoting)") from None
    if header is None:
        raise ManifestError(f"{path}: empty CSV manifest (add a header row: audio,prompt,text)")


def _check_header(path: Path, line: int, header: list[str], require_text: bool = True,
                  defaulted: bool = False) -> None:
    missing = [c for c in ("audio", "text") if c not in header]
    if "prompt" not in header and "task" not in header and not defaulted:
        missing.append("prompt or task")
    if not require_text:  # inference: rows may lack a target, and take the reader's default task
        missing = [c for c in missing if c == "audio"]
    if missing:
        raise ManifestError(
            f"{path}:{line}: CSV header lacks column {', '.join(repr(m) for m in missing)} "
            f"({_suggest(missing[0], header)}the header must name audio, text, and prompt or task)"
        )
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ManifestError(f"{path}:{line}: CSV header repeats column {duplicated[0]!r} (name each column once)")


def _has_surrogate(cell: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in cell)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _suggest(key: str, keys: Iterable[str]) -> str:
    """``"rename 'txt' to 'text'; "`` when a present key looks like a typo of ``key``."""
    close = difflib.get_close_matches(key, [k for k in keys if k not in _RESERVED], n=1, cutoff=0.7)
    return f"rename '{close[0]}' to '{key}'; " if close else ""


def _string(row: dict[str, Any], key: str, fix: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(f"'{key}' must be a string, got {_kind(value)}", fix)
    if not value.strip():
        return None
    return value


def _seconds(row: dict[str, Any], key: str, from_csv: bool) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if from_csv:  # CSV cells are text; JSON must use a number
        try:
            value = float(value)
        except ValueError:
            raise _Bad(f"'{key}' must be a number of seconds, got '{row[key]}'", f"write e.g. {key}=1.5") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"'{key}' must be a number of seconds, got {_kind(value)}", f'write e.g. "{key}": 1.5')
    if not math.isfinite(value) or value < 0:
        raise _Bad(f"'{key}' is {value}", "give a time in seconds >= 0")
    return float(value)


def _example(row: dict[str, Any], line: int, source: Path, from_csv: bool,
             default_task: str | None = None, templates: Mapping[str, str] = {},
             require_text: bool = True, default_prompt: str | None = None) -> Example:
    audio = _string(row, "audio", "give the clip's path as a string")
    if audio is None:
        raise _Bad(
            "missing or empty 'audio'",
            f"{_suggest('audio', row)}add the clip's path, relative to the manifest's folder",
        )
    text = _string(row, "text", "give the target text as a string; for several targets write several rows")
    if text is None and not require_text:
        text = ""
    if text is None:
        raise _Bad("missing or empty 'text'", f"{_suggest('text', row)}add the target text")
    prompt = _string(row, "prompt", "give the prompt as a string")
    task = _string(row, "task", "give the task name as a string")
    if prompt is None and task is None:
        task = default_task
    if prompt is None and (default_prompt or task is None):
        prompt = default_prompt  # the dataset's question replaces templates; "": rows need none (labels)
    if prompt is None and task is None:
        raise _Bad(
            "missing 'prompt' or 'task'",
            f"{_suggest('prompt', row) or _suggest('task', row)}add a literal prompt, "
            f"or a task: {', '.join(TEMPLATES)}",
        )
    start, end = _seconds(row, "start", from_csv), _seconds(row, "end", from_csv)
    if start is not None and end is not None and start >= end:
        raise _Bad(f"start {start:g} is not before end {end:g}", "fix the segment bounds")
    if task is not None:
        fields = {k: v for k, v in row.items() if k not in _RESERVED}
        try:
            if task in templates:  # the dataset's own template for this task
                prompt = fill(templates[task], task, fields) if prompt is None else prompt
            elif prompt is None:
                prompt = render(task, **fields)
            else:  # a literal prompt needs no fields, but the task label must exist
                template_fields(task)
        except TemplateError as exc:  # its message is already "<what> (<fix>)"
            raise _Bad(str(exc)) from None
    path = Path(audio)
    return Example(
        audio=path if path.is_absolute() else source.parent / path,
        prompt=prompt,
        text=text,
        start=start,
        end=end,
        task=task,
        line=line,
        source=source,
        fields={k: v for k, v in row.items() if k not in _RESERVED},
    )


def write_manifest(path: str | Path, examples: Iterable[Example | dict[str, Any]]) -> int:
    """Write examples (or plain row dicts) as JSONL, atomically; returns the row count.

    Audio paths inside the manifest's folder (``Example.audio``, or an absolute ``Path``
    under a dict's ``"audio"``) are written relative to it, so the manifest and its clips can
    move together.
    """
    path = Path(path)
    folder = path.parent
    lines = []
    for item in examples:
        if isinstance(item, Example):
            row: dict[str, Any] = {"audio": _relative(item.audio, folder), "prompt": item.prompt}
            if item.task is not None:
                row["task"] = item.task
            row.update(item.fields)
            row["text"] = item.text
            for key in ("start", "end"):
                if getattr(item, key) is not None:
                    row[key] = getattr(item, key)
        elif isinstance(item, dict):
            row = {k: _path_value(k, v, folder) if isinstance(v, Path) else v for k, v in item.items()}
        else:
            raise TypeError(f"write_manifest takes Example objects or dicts, got {type(item).__name__}")
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return write_lines(path, lines)


def write_lines(path: Path, lines: list[str]) -> int:
    """Write ``lines`` to ``path`` atomically (a temporary file beside it, then a rename); returns
    how many."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(lines)


def _path_value(key: str, value: Path, folder: Path) -> str:
    return _relative(value, folder) if key == "audio" and value.is_absolute() else value.as_posix()


def _relative(audio: Path, folder: Path) -> str:
    try:
        return audio.absolute().relative_to(folder.absolute()).as_posix()
    except ValueError:
        return str(audio.absolute())
