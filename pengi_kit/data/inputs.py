"""What to run inference on: files, folders and manifests expanded into (clip, prompt) jobs.

>>> jobs, problems = collect_inputs(["clips/", "more.jsonl"], ["generate audio caption"])  # doctest: +SKIP

Nothing is decoded here (manifests are read); the jobs' clips go to
:meth:`pengi_kit.api.Pengi.generate_pairs`, which loads them.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from pengi_kit.data.audio import check_audio_file
from pengi_kit.data.manifest import MANIFEST_SUFFIXES, read_manifest
from pengi_kit.errors import PengiKitError

DEFAULT_PROMPT = "generate audio caption"
# What libsndfile (soundfile) decodes; folders are searched for these.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc", ".au",
                    ".snd", ".caf", ".w64", ".rf64")


@dataclass(frozen=True)
class Clip:
    """A segment of an audio file, in seconds: ``Clip("long.wav", start=10, end=17)``."""

    path: str | Path
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class Job:
    """One (clip, prompt) request from :func:`collect_inputs`; ``name`` labels it in outputs."""

    audio: Clip
    prompt: str
    name: str

    @property
    def segment(self) -> dict[str, float]:
        return {k: v for k, v in (("start", self.audio.start), ("end", self.audio.end)) if v is not None}


def _kind(path: Path) -> str:
    """``"file"`` (regular), ``"dir"``, or ``"other"`` (anything unreadable as a file)."""
    try:
        mode = path.stat().st_mode
    except OSError:  # broken symlink, symlink loop, no permission ...
        return "other"
    return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"


def _not_a_file(path: Path) -> str:
    """Why ``path`` (not a regular file, not a folder) cannot be read, in one line."""
    try:
        check_audio_file(path)
    except PengiKitError as exc:
        return str(exc)
    return f"{path}: is not a regular file (point to the audio file itself)"  # changed meanwhile


def collect_inputs(inputs: Iterable[str | Path], prompts: Sequence[str] = (DEFAULT_PROMPT,)
                   ) -> tuple[list[Job], list[str]]:
    """Expand files, folders (searched recursively for :data:`AUDIO_EXTENSIONS`) and
    manifests (``.jsonl``/``.csv`` rows with ``audio`` and a ``prompt`` or ``task``,
    optional ``start``/``end``; see :mod:`pengi_kit.data.manifest`) into jobs.

    Files and folder contents get every one of ``prompts``; manifest rows bring their
    own prompt, and rows without one get every one of ``prompts``, whose ``{fields}``
    are filled from the row. Returns the jobs and one message per problem (a missing
    input, a bad manifest line, and in a folder every entry named like audio that is
    not a regular file: a broken symlink, a symlink loop, a named pipe ...); nothing is
    opened but manifests.
    """
    prompts = list(prompts) or [DEFAULT_PROMPT]
    jobs: list[Job] = []
    problems: list[str] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            named = [(p, _kind(p)) for p in sorted(path.rglob("*")) if p.suffix.lower() in AUDIO_EXTENSIONS]
            files = [p for p, k in named if k == "file"]
            # a folder named like audio is walked, not read; anything else left out is reported
            bad = [_not_a_file(p) for p, k in named if k == "other"]
            problems += bad
            if not files and not bad:
                problems.append(f"{given}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            jobs += [Job(Clip(str(f)), prompt, str(f)) for f in files for prompt in prompts]
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            for i, prompt in enumerate(prompts):
                try:  # rows without a prompt or task get the pseudo-task "--prompt"
                    rows, bad = read_manifest(path, on_error="skip", task="--prompt",
                                              templates={"--prompt": prompt}, require_text=False)
                except PengiKitError as exc:
                    problems.append(str(exc))
                    break
                if i == 0:
                    problems += bad
                rows = rows if i == 0 else [r for r in rows if r.task == "--prompt"]
                jobs += [Job(Clip(str(r.audio), r.start, r.end), r.prompt, str(r.audio)) for r in rows]
        elif path.is_file():
            jobs += [Job(Clip(str(given)), prompt, str(given)) for prompt in prompts]
        elif os.path.lexists(path):  # a pipe, a socket, a broken symlink, a symlink loop ...
            problems.append(_not_a_file(path))
        else:
            problems.append(f"{given}: no such file or folder (check the path)")
    return jobs, problems
