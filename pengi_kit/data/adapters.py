"""Dataset adapters: a public corpus, in its own layout, becomes manifest rows.

An adapter is a function ``adapter(root: Path) -> Iterable[dict | str]``: each dict
is a manifest row (``audio`` as a ``Path``, a Pengi ``task``, the target ``text``, the
task's template fields such as ``question``, and the corpus's ``split``); each string
is a one-line problem for something it had to leave out. Adapters are the plugin kind
``dataset``, so a plugin adds corpora the same way (``register("dataset", "my-corpus",
"my_plugin.data:my_corpus")``). :func:`prepare` runs one and writes the manifest;
``pengi-kit data prepare NAME --root DIR --out manifest.jsonl`` calls it.

The built-in adapters read the layouts the corpora are distributed in:

=================  =====================================================================
clotho             ``clotho_captions_{development,validation,evaluation}.csv``
                   (``file_name, caption_1..caption_5``), audio in
                   ``clotho_audio_<split>/`` (or ``<split>/``): 5 caption rows per clip
audiocaps          ``{train,val,test}.csv`` (``audiocap_id, youtube_id, start_time,
                   caption``), audio files named by YouTube id anywhere under the root
clotho-aqa         ``clotho_aqa_{train,val,test}.csv`` (``file_name, QuestionText,
                   answer, confidence``), audio in ``audio_files/``: qa rows, yes/no and
                   open answers (``answer_type``); answers given with confidence "no"
                   are left out
esc50              ``meta/esc50.csv`` (``filename, fold, target, category, esc10,
                   src_file, take``), ``audio/``: split ``fold1``..``fold5``
urbansound8k       ``metadata/UrbanSound8K.csv`` (``slice_file_name, fsID, start, end,
                   salience, fold, classID, class``), ``audio/foldN/``
fsd50k             ``FSD50K.ground_truth/{dev,eval}.csv`` (``fname, labels, mids[,
                   split]``), ``FSD50K.{dev,eval}_audio/``: all labels of a clip, comma
                   separated
gtzan              ``genres/<genre>/<genre>.000NN.wav`` (or ``genres_original/``, or
                   ``.au``)
nsynth             ``examples.json`` (keyed by ``note_str``) and ``audio/<note_str>.wav``,
                   in the root or in ``nsynth-{train,valid,test}/``: instrument, pitch,
                   velocity and qualities rows per note
free-spoken-digit  ``recordings/{digit}_{speaker}_{index}.wav``: qa rows; index 0-4 is
                   the corpus's test split
=================  =====================================================================
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pengi_kit.errors import PengiKitError

__all__ = ["AdapterError", "PrepareReport", "prepare", "clotho", "audiocaps", "clotho_aqa", "esc50",
           "urbansound8k", "fsd50k", "gtzan", "nsynth", "free_spoken_digit"]

Item = dict[str, Any] | str
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".au", ".aiff", ".aif")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class AdapterError(PengiKitError):
    """A corpus is not where, or not in the layout, its adapter expects."""


# ---------------------------------------------------------------- shared pieces

def row(audio: Path, task: str, text: str, split: str | None = None, **fields: Any) -> dict[str, Any]:
    """One manifest row; empty fields are left out."""
    out: dict[str, Any] = {"audio": audio, "task": task, "text": text.strip()}
    out.update({k: v for k, v in fields.items() if v not in (None, "")})
    if split:
        out["split"] = split
    return out


def label(name: str) -> str:
    """A class name as text: ``"Chirping_birds"`` -> ``"chirping birds"``."""
    return " ".join(name.replace("_", " ").split()).lower()


def first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


def require(path: Path | None, corpus: str, what: str, hint: str) -> Path:
    if path is None or not path.exists():
        raise AdapterError(f"{corpus}: {what} not found{f' at {path}' if path else ''} ({hint})")
    return path


def read_csv(path: Path, columns: Iterable[str], corpus: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) of a metadata CSV whose header must hold ``columns``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:  # some metadata files of the era are Latin-1
        text = path.read_text(encoding="latin-1")
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise AdapterError(f"{corpus}: {path} has no column {', '.join(repr(m) for m in missing)} "
                           f"(its header is {reader.fieldnames}; is this the right file?)")
    for entry in reader:
        yield reader.line_num, {k: (v or "").strip() for k, v in entry.items() if k is not None}


def csv_splits(root: Path, corpus: str, names: dict[str, str], folders: Iterable[str] = ("",)) -> list[tuple[str, Path]]:
    """(split, csv path) for each split's CSV present under ``root`` (or its ``folders``)."""
    found = []
    for split, name in names.items():
        path = first_existing(*(root / folder / name for folder in folders))
        if path is not None:
            found.append((split, path))
    if not found:
        raise AdapterError(f"{corpus}: none of {', '.join(names.values())} under {root} "
                           "(point --root at the folder that holds them)")
    return found


def classification(corpus: str, meta: Path, columns: tuple[str, str, str],
                   audio: Callable[[dict[str, str]], Path], root: Path) -> Iterator[Item]:
    """Rows of a one-label-per-clip CSV: (file column, label column, fold column)."""
    file_col, label_col, fold_col = columns
    meta = require(meta, corpus, "metadata", f"point --root at the folder that holds {meta.relative_to(root)}")
    for _, entry in read_csv(meta, columns, corpus):
        yield row(audio(entry), "classification", label(entry[label_col]), f"fold{entry[fold_col]}")


# ---------------------------------------------------------------- captioning

def clotho(root: Path) -> Iterator[Item]:
    """Clotho v2: five caption rows per clip, splits development / validation / evaluation."""
    names = {s: f"clotho_captions_{s}.csv" for s in ("development", "validation", "evaluation")}
    for split, meta in csv_splits(root, "Clotho", names, ("", "clotho_csv_files")):
        folder = first_existing(root / f"clotho_audio_{split}", root / split,
                                root / "clotho_audio_files" / split) or root / f"clotho_audio_{split}"
        columns = ["file_name"] + [f"caption_{k}" for k in range(1, 6)]
        for line, entry in read_csv(meta, columns, "Clotho"):
            for k in range(1, 6):
                if entry[f"caption_{k}"]:
                    yield row(folder / entry["file_name"], "caption", entry[f"caption_{k}"], split)


def _by_youtube_id(root: Path) -> dict[str, Path]:
    """Audio files under ``root`` by the 11-character YouTube id their names start with
    (``<id>.wav``, ``Y<id>.wav``, ``<id>_<start>.flac`` ...)."""
    index: dict[str, Path] = {}
    named = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES and not p.is_dir()]
    # regular files first; a broken symlink or a pipe is indexed only where nothing better is, so that
    # `prepare` reports it by its real problem rather than as a missing download
    for path in sorted(named, key=lambda p: not p.is_file()):
        stem = path.stem
        index.setdefault(stem[:11], path)
        if stem.startswith("Y") and len(stem) >= 12:
            index.setdefault(stem[1:12], path)
    return index


def audiocaps(root: Path) -> Iterator[Item]:
    """AudioCaps: one caption row per CSV line, audio found by YouTube id."""
    names = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
    metas = csv_splits(root, "AudioCaps", names, ("", "dataset", "metadata", "csv"))
    audio = _by_youtube_id(root)
    for split, meta in metas:
        for line, entry in read_csv(meta, ("audiocap_id", "youtube_id", "start_time", "caption"), "AudioCaps"):
            path = audio.get(entry["youtube_id"])
            if path is None:
                yield f"{meta}:{line}: no audio file for YouTube id {entry['youtube_id']} (not downloaded?)"
            elif entry["caption"]:
                yield row(path, "caption", entry["caption"], split, audiocap_id=entry["audiocap_id"])


# ---------------------------------------------------------------- question answering

def clotho_aqa(root: Path) -> Iterator[Item]:
    """Clotho-AQA: one qa row per answer; ``answer_type`` is ``yes/no`` or ``open``."""
    names = {s: f"clotho_aqa_{s}.csv" for s in ("train", "val", "test")}
    folder = first_existing(root / "audio_files", root / "audio") or root
    for split, meta in csv_splits(root, "Clotho-AQA", names):
        for line, entry in read_csv(meta, ("file_name", "QuestionText", "answer", "confidence"), "Clotho-AQA"):
            answer = entry["answer"].lower()
            if entry["confidence"].lower() == "no" or not answer or not entry["QuestionText"]:
                continue
            kind = "yes/no" if answer in ("yes", "no") else "open"
            yield row(folder / entry["file_name"], "qa", answer, split, question=entry["QuestionText"],
                      answer_type=kind)


def free_spoken_digit(root: Path) -> Iterator[Item]:
    """Free Spoken Digit Dataset: "which digit is spoken?" rows; index 0-4 is the test split."""
    folder = require(first_existing(root / "recordings", root), "free-spoken-digit", "recordings/",
                     "point --root at the repository folder")
    for path in sorted(folder.glob("*.wav")):
        parts = path.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) != 1 or not parts[2].isdigit():
            yield f"{path}: name is not <digit>_<speaker>_<index>.wav (left out)"
            continue
        split = "test" if int(parts[2]) < 5 else "train"
        yield row(path, "qa", DIGITS[int(parts[0])], split, question="which digit is spoken?", speaker=parts[1])


# ---------------------------------------------------------------- classification

def esc50(root: Path) -> Iterator[Item]:
    """ESC-50: 50 classes, five folds."""
    return classification("ESC-50", root / "meta" / "esc50.csv", ("filename", "category", "fold"),
                          lambda e: root / "audio" / e["filename"], root)


def urbansound8k(root: Path) -> Iterator[Item]:
    """UrbanSound8K: 10 classes, ten folds, audio in ``audio/foldN/``."""
    return classification("UrbanSound8K", root / "metadata" / "UrbanSound8K.csv",
                          ("slice_file_name", "class", "fold"),
                          lambda e: root / "audio" / f"fold{e['fold']}" / e["slice_file_name"], root)


def fsd50k(root: Path) -> Iterator[Item]:
    """FSD50K: every label of a clip, comma separated; splits train / val (of dev) and eval."""
    truth = require(first_existing(root / "FSD50K.ground_truth"), "FSD50K", "FSD50K.ground_truth/",
                    "point --root at the folder that holds FSD50K.ground_truth/ and the audio folders")
    for part in ("dev", "eval"):
        meta = truth / f"{part}.csv"
        if not meta.exists():
            continue
        folder = root / f"FSD50K.{part}_audio"
        columns = ("fname", "labels", "mids") + (("split",) if part == "dev" else ())
        for line, entry in read_csv(meta, columns, "FSD50K"):
            labels = [label(x) for x in entry["labels"].split(",") if x.strip()]
            if not labels:
                yield f"{meta}:{line}: no labels for clip {entry['fname']} (left out)"
                continue
            yield row(folder / f"{entry['fname']}.wav", "classification", ", ".join(labels),
                      entry.get("split") or part)


# ---------------------------------------------------------------- music

def gtzan(root: Path) -> Iterator[Item]:
    """GTZAN: the genre of each 30-second excerpt (the corpus has no official split)."""
    genres = require(first_existing(root / "genres", root / "genres_original", root / "Data" / "genres_original"),
                     "GTZAN", "genres/", "point --root at the folder that holds genres/<genre>/")
    for folder in sorted(p for p in genres.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".wav", ".au"):
                yield row(path, "music_genre", label(folder.name))


def nsynth(root: Path) -> Iterator[Item]:
    """NSynth: per note, instrument ("acoustic keyboard"), MIDI pitch, velocity and qualities rows."""
    parts = [(p.name.removeprefix("nsynth-"), p) for p in sorted(root.glob("nsynth-*")) if (p / "examples.json").exists()]
    if not parts and (root / "examples.json").exists():
        parts = [(root.name.removeprefix("nsynth-"), root)]
    if not parts:
        raise AdapterError(f"NSynth: no examples.json under {root} or {root}/nsynth-*/ "
                           "(point --root at an nsynth-<split> folder or the folder holding them)")
    for split, folder in parts:
        try:
            notes = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise AdapterError(f"NSynth: {folder / 'examples.json'} is not valid JSON ({exc})") from None
        for note, meta in notes.items():
            try:
                audio = folder / "audio" / f"{meta.get('note_str', note)}.wav"
                instrument = f"{meta['instrument_source_str']} {meta['instrument_family_str']}"
                pitch, velocity, qualities = int(meta["pitch"]), int(meta["velocity"]), meta["qualities_str"]
            except (KeyError, TypeError, ValueError) as exc:
                yield f"{folder / 'examples.json'}: note {note}: missing or bad field {exc} (left out)"
                continue
            yield row(audio, "music_instrument", label(instrument), split)
            yield row(audio, "music_pitch", str(pitch), split)
            yield row(audio, "music_velocity", str(velocity), split)
            if qualities:
                yield row(audio, "music_note", ", ".join(label(q) for q in qualities), split)


# ---------------------------------------------------------------- running one

@dataclass
class PrepareReport:
    rows: int = 0
    clips: int = 0
    splits: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def _why_not_a_file(audio: Path) -> str:
    """``"<path>: <reason>"`` for an audio path that is not a regular file."""
    from pengi_kit.data.audio import check_audio_file

    if not os.path.lexists(audio):
        return f"{audio}: audio file not found"
    try:
        check_audio_file(audio)  # stat only: it is not a regular file, so it is not opened
    except PengiKitError as exc:
        return str(exc)
    return f"{audio}: is not a regular file"


def prepare(name: str, root: str | Path, out: str | Path, *, splits: Iterable[str] = (),
            registry: Any | None = None) -> PrepareReport:
    """Run the ``dataset`` adapter ``name`` on ``root`` and write its rows to ``out`` (JSONL).

    Rows whose audio file is missing (or is not a regular file: a broken symlink, a
    named pipe ...) are left out and listed in ``problems``, as are the adapter's own
    problems. ``splits`` keeps only those splits. Audio paths are written relative to
    the manifest's folder (absolute when outside it), so the manifest loads from
    wherever it is written, whatever the current folder and however ``root`` is given.
    """
    from pengi_kit.data.manifest import write_manifest
    from pengi_kit.data.templates import TEMPLATES, TemplateError, render

    if registry is None:
        from pengi_kit.plugins import registry as get_registry
        registry = get_registry()
    adapter = registry.get("dataset", name, where="data prepare").load()
    root = Path(root)
    if not root.is_dir():
        raise AdapterError(f"{name}: --root {root} is not a folder (point it at the unpacked corpus)")
    wanted = set(splits)
    report = PrepareReport()
    rows: list[dict[str, Any]] = []
    present: dict[Path, bool] = {}
    seen_splits: set[str] = set()
    for item in adapter(root):
        if isinstance(item, str):
            report.problems.append(item)
            continue
        seen_splits.add(item.get("split", ""))
        if wanted and item.get("split") not in wanted:
            continue
        audio = Path(item["audio"])
        if audio not in present:
            present[audio] = audio.is_file()
            if not present[audio]:
                report.problems.append(f"{_why_not_a_file(audio)} (left out)")
        if not present[audio]:
            continue
        try:
            if item.get("task") in TEMPLATES:
                render(item["task"], **item)
        except TemplateError as exc:
            raise AdapterError(f"{name}: adapter wrote a row that does not render: {exc}") from None
        # absolute here, so that the manifest holds paths relative to its own folder (or
        # absolute), never relative to the folder `prepare` happened to run in
        rows.append({**item, "audio": Path(os.path.abspath(audio))})
        report.splits[item.get("split", "")] += 1
        report.tasks[item.get("task") or item.get("benchmark") or "own prompt"] += 1
    if not rows:
        if wanted:
            known = ", ".join(sorted(s for s in seen_splits if s)) or "none"
            raise AdapterError(f"{name}: no rows in split {', '.join(sorted(wanted))} (its splits: {known})")
        first = f", the first: {report.problems[0]}" if report.problems else ""
        raise AdapterError(f"{name}: no usable rows under {root} ({len(report.problems)} problem(s){first}; "
                           "check --root)")
    report.rows = write_manifest(out, rows)
    report.clips = sum(present.values())
    return report
