"""``pengi-kit data check``: decode every clip of a manifest, list each problem, sum it up.

Each distinct clip (or ``start``/``end`` segment) is decoded once at its own rate,
with the checks of :func:`pengi_kit.data.audio.load_audio` (missing, broken symlink,
symlink loop, permission denied, a named pipe or device instead of a file, empty,
corrupt, not really MP3, truncated, NaN/inf, no channels, implausible rate, too long
...); a path is checked before anything opens it, so nothing blocks. Bad manifest lines
are problems too. Example::

    report = check_manifest("train.jsonl", jobs=4)
    print("\\n".join(report.problems + report.summary()))
"""
from __future__ import annotations

import re
import statistics
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CheckReport", "check_manifest", "probe"]


@dataclass
class CheckReport:
    rows: int = 0
    clips: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rates: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> list[str]:
        def counts(c: Counter, unit: str = "") -> str:
            return ", ".join(f"{k}{unit}: {n}" for k, n in c.most_common()) or "-"

        good = len(self.durations)
        lines = [f"rows: {self.rows}, clips: {self.clips} ({good} good, {self.clips - good} bad), "
                 f"problems: {len(self.problems)}",
                 f"hours: {self.seconds / 3600:.3f}"]
        if self.durations:
            d = self.durations
            lines.append(f"durations (s): min {min(d):.2f}, median {statistics.median(d):.2f}, "
                         f"mean {statistics.fmean(d):.2f}, max {max(d):.2f}")
        lines += [f"sample rates: {counts(self.rates, ' Hz')}", f"channels: {counts(self.channels)}",
                  f"formats: {counts(self.formats)}"]
        return lines


def probe(item: tuple[str, float | None, float | None, float]) -> dict[str, Any]:
    """Decode one clip or segment at its own rate: its properties, or ``{"error": line}``.

    The path is checked before it is opened (a named pipe is refused, not read), as
    :func:`~pengi_kit.data.audio.load_audio` does.
    """
    from pengi_kit.data.audio import audio_info, load_audio
    from pengi_kit.errors import PengiKitError

    path, start, end, max_seconds = item
    try:
        info = audio_info(path)
        rate = info["rate"] if 1_000 <= info["rate"] <= 768_000 else 16_000
        wav = load_audio(path, rate, start=start, end=end, max_seconds=max_seconds)
    except PengiKitError as exc:
        return {"error": str(exc)}
    return {"seconds": len(wav) / rate, "rate": info["rate"], "channels": info["channels"],
            "format": f"{info['format']} {info['subtype']}"}


def _conversation_clips(path: str | Path, format: str | None, report: CheckReport
                        ) -> dict[tuple[str, float | None, float | None], list[Any]]:
    """The clips of a conversation file by path (a clip held in the file is decoded here: its
    problems join the report); its bad rows are problems."""
    import io

    from pengi_kit.data.audio import load_audio
    from pengi_kit.data.conversations import InlineAudio, read_conversations
    from pengi_kit.errors import PengiKitError

    rows, errors = read_conversations(path, on_error="skip", format=format)
    report.rows, report.problems = len(rows), list(errors)
    users: dict[tuple[str, float | None, float | None], list[Any]] = {}
    for row in rows:
        for n, clip in enumerate(row.audios, start=1):
            if not isinstance(clip, InlineAudio):
                users.setdefault((str(clip), None, None), []).append(row)
                continue
            try:
                load_audio(io.BytesIO(clip.data), 16_000, name=f"clip {n} ({clip.format})")
            except PengiKitError as exc:
                report.problems.append(f"{row.where}: {exc}")
    return users


def check_manifest(path: str | Path, *, jobs: int = 1, max_seconds: float = 3600.0,
                   progress: bool | None = None, format: str | None = None) -> CheckReport:
    """Check every line and every clip of a manifest, or of a conversation file (the chat layout's
    rows, :mod:`pengi_kit.data.conversations`; ``format`` where its rows do not tell); see the
    module docstring."""
    from pengi_kit.data.conversations import is_conversation_file
    from pengi_kit.data.manifest import read_manifest
    from pengi_kit.progress import bar as progress_bar

    report = CheckReport()
    if format is not None or is_conversation_file(path):
        users = _conversation_clips(path, format, report)
    else:
        examples, line_errors = read_manifest(path, on_error="skip")
        report.rows, report.problems = len(examples), list(line_errors)
        users = {}
        for ex in examples:
            users.setdefault((str(ex.audio), ex.start, ex.end), []).append(ex)
    items = [(*key, max_seconds) for key in users]
    report.clips = len(items)
    bar = progress_bar(len(items), "checking", "clip", enabled=progress)
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(_tick(pool.map(probe, items, chunksize=16), bar))
    else:
        results = list(_tick(map(probe, items), bar))
    bar.close()
    for key, result in zip(users, results):
        if "error" in result:
            first, rest = users[key][0], len(users[key]) - 1
            more = f" [and {rest} more row{'s' if rest > 1 else ''} of this clip]" if rest else ""
            report.problems.append(f"{first.source}:{first.line}: {result['error']}{more}")
            continue
        report.seconds += result["seconds"]
        report.durations.append(result["seconds"])
        report.rates[result["rate"]] += 1
        report.channels[result["channels"]] += 1
        report.formats[result["format"]] += 1
    report.problems.sort(key=_line_number)
    return report


def _line_number(problem: str) -> int:
    """Problems start with ``manifest:LINE:`` (``file:item N:`` in a JSON list): list them in the
    file's order."""
    m = re.match(r".*?:(?:item )?(\d+): ", problem)
    return int(m.group(1)) if m else 0


def _tick(results: Any, bar: Any) -> Any:
    for result in results:
        bar.update(1)
        yield result
