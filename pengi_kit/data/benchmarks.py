"""The audio multiple-choice benchmarks in the files their authors distribute: MMAU, MMAR and
AIR-Bench foundation. Torch-free: scoring a file of predictions made elsewhere loads no model.

=========  ===================================================================================
mmau       a JSON list (``mmau-test-mini.json``, ``mmau-test.json``): ``id``, ``audio_id`` (a path
           relative to the file's folder), ``question``, ``choices``, ``answer`` (a choice's
           text; absent in the test split), ``task`` (sound/music/speech), ``difficulty``,
           ``category``, ``sub-category``, ``dataset``, ``split``
mmar       a JSON list or JSONL (``MMAR-meta.json``): ``id``, ``audio_path``, ``question``,
           ``choices``, ``answer``, ``modality``, ``category``, ``sub-category``, ...
air-bench  ``Foundation_meta.json``: ``path``, ``question``, ``choice_a`` .. ``choice_d`` (c and d
           optional), ``answer_gt`` (a choice's text), ``task_name``, ``dataset_name``,
           ``uniq_id``; audio in ``{task_name}_{dataset_name}/{path}`` (``.flac`` for
           Audio_Grounding, as its inference script reads it)
=========  ===================================================================================

:class:`Item` is one question in a common shape; :data:`BENCHMARKS` holds what each
benchmark's official script does (where it reads a model's answer, its rule, its breakdowns)
and its published prompt. The adapters :func:`mmau`, :func:`mmar` and :func:`air_bench` make
manifest rows (``pengi-kit data prepare mmau --root DIR --out FILE``) that keep every item's
original record, so that predictions go back out in the official format.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pengi_kit.errors import PengiKitError

__all__ = ["Benchmark", "BENCHMARKS", "Item", "read_items", "item_from_row", "render", "mmau", "mmar", "air_bench"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Benchmark:
    """What a benchmark's official scoring script does, and its published prompt."""

    name: str
    key: str  # the key its script reads a model's answer from
    rule: str  # "tokens": MMAU's string_match; "letter": AIR-Bench's first / second-to-last character
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # the breakdowns it prints: (field, values it lists first)
    template: str  # the published prompt; {question}, {choices} (Python's list form), {choice_lines},
    # {lettered} ("A. ..." lines) and any field of the original record
    source: str  # where the rule and the prompt were read


BENCHMARKS = {
    "mmau": Benchmark(
        "mmau", "model_output", "tokens",
        (("task", ("sound", "music", "speech")), ("difficulty", ("easy", "hard", "medium")), ("sub-category", ())),
        "\n{question}  Select one option from the provided choices.\n{choices}.",
        "Sakshi113/MMAU evaluation.py (string_match, key model_output); prompt: the authors in MMAU issue #3"),
    "mmar": Benchmark(
        "mmar", "answer_prediction", "tokens",
        (("modality", ("sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
                       "mix-sound-music-speech")),
         ("category", ("Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer")),
         ("sub-category", ())),
        "{question}\nSelect one option from the provided choices:\n{choice_lines}",
        "ddlBoJack/MMAR code/evaluation.py (MMAU's string_match, key answer_prediction); prompt: MMAR issue #3"),
    "air-bench": Benchmark(
        "air-bench", "response", "letter", (("task_dataset", ()),),
        "Choose the most suitable answer from options A, B, C, and D to respond the question in next line, "
        "you may only choose A or B or C or D.\n{question}\nA. {choice_a}\nB. {choice_b}\nC. {choice_c}\nD. {choice_d}",
        "OFA-Sys/AIR-Bench score_foundation.py and Inference_Foundation.py (letter rule, no GPT alignment)"),
}


@dataclass
class Item:
    """One question: its clip (as the benchmark file names it), choices, answer (None where the
    split has none), the fields its official breakdowns group by, and the original record."""

    id: str
    audio: str
    question: str
    choices: list[str]
    answer: str | None
    groups: dict[str, str]
    record: dict[str, Any] = field(repr=False)


def detect(record: dict[str, Any]) -> str | None:
    """The benchmark whose layout ``record`` has, or None."""
    if "choice_a" in record and "answer_gt" in record:
        return "air-bench"
    if "audio_id" in record and "choices" in record:
        return "mmau"
    if "audio_path" in record and "choices" in record:
        return "mmar"
    return None


def _item(name: str, record: dict[str, Any], where: str) -> Item:
    def need(key: str) -> Any:
        if record.get(key) in (None, ""):
            raise PengiKitError(f"{where}: no {key!r} (is this a {name} file?)")
        return record[key]

    if name == "air-bench":
        choices = [str(record[k]) for k in ("choice_a", "choice_b", "choice_c", "choice_d")
                   if record.get(k) is not None]
        task = f"{need('task_name')}_{need('dataset_name')}"
        path = str(need("path"))
        if record["task_name"] == "Audio_Grounding":  # its inference script reads these clips as .flac
            path = path[:-3] + "flac"
        return Item(str(record.get("uniq_id", where)), f"{task}/{path}", str(need("question")), choices,
                    record.get("answer_gt"), {"task_dataset": task}, record)
    choices = need("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise PengiKitError(f"{where}: 'choices' must be a list of texts")
    groups = {g: str(record[g]) for g, _ in BENCHMARKS[name].groups if record.get(g) is not None}
    return Item(str(record.get("id", where)), str(need("audio_id" if name == "mmau" else "audio_path")),
                str(need("question")), choices, record.get("answer"), groups, record)


def read_items(path: str | Path, benchmark: str | None = None) -> tuple[Benchmark, list[Item]]:
    """The items of a benchmark file (a JSON list, or JSONL); ``benchmark`` None: told by its layout."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PengiKitError(f"{path}: cannot read: {exc.strerror} (check the path)") from None
    lines = [(0, text)] if text.lstrip().startswith("[") else enumerate(text.splitlines())
    records: list[Any] = []
    for offset, chunk in lines:
        try:
            if chunk.strip():
                loaded = json.loads(chunk)
                records += loaded if offset == 0 and isinstance(loaded, list) else [loaded]
        except json.JSONDecodeError as exc:
            raise PengiKitError(f"{path}:{offset + exc.lineno}: not JSON: {exc.msg} (a benchmark file is a JSON "
                                "list or JSON lines)") from None
    if not records or not all(isinstance(r, dict) for r in records):
        raise PengiKitError(f"{path}: expected a list of items (JSON objects)")
    if benchmark is None:
        benchmark = detect(records[0])
        if benchmark is None:
            raise PengiKitError(f"{path}: not the layout of {', '.join(BENCHMARKS)} (its first item has keys "
                                f"{sorted(records[0])}); name the benchmark with --benchmark")
    if benchmark not in BENCHMARKS:
        raise PengiKitError(f"unknown benchmark {benchmark!r} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[benchmark], [_item(benchmark, r, f"{path}: item {i + 1}") for i, r in enumerate(records)]


def render(template: str, item: Item) -> str:
    """``template`` filled from ``item`` (the placeholders of :attr:`Benchmark.template`)."""
    # AIR-Bench's inference script reads absent choices with .get(): a two-choice item shows "C. None"
    values = {"choice_c": "None", "choice_d": "None"} | {k: str(v) for k, v in item.record.items()}
    values.update(question=item.question, choices=str(item.choices), choice_lines="\n".join(item.choices),
                  lettered="\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)))
    try:
        return template.format_map(values)
    except KeyError as exc:
        raise PengiKitError(f"prompt template {template!r}: no field {exc} in item {item.id} (use {{question}}, "
                            "{choices}, {choice_lines}, {lettered} or a field of the item)") from None


def item_from_row(fields: dict[str, Any]) -> tuple[Benchmark, Item]:
    """The benchmark and item of a manifest row that :func:`prepare` wrote (its extra fields)."""
    name = fields.get("benchmark")
    if name not in BENCHMARKS or not isinstance(fields.get("item"), dict):
        raise PengiKitError("not a multiple-choice row: it needs 'benchmark' (one of "
                            f"{', '.join(BENCHMARKS)}) and the original 'item' (write it with pengi-kit data prepare)")
    return BENCHMARKS[name], _item(name, fields["item"], f"item {fields.get('id', '?')}")


# ---------------------------------------------------------------- adapters (pengi-kit data prepare)

def _rows(name: str, root: Path, pattern: str, audio_root: Path | None = None) -> Iterator[dict[str, Any] | str]:
    from pengi_kit.data.adapters import AdapterError

    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix in (".json", ".jsonl"))
    found = False
    for path in files:
        try:
            bench, items = read_items(path)
        except PengiKitError:
            continue
        if bench.name != name:
            continue
        found = True
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        for item in items:
            split = str(item.record.get("split", "test"))
            yield {"audio": (audio_root or path.parent) / item.audio, "prompt": render(bench.template, item),
                   "text": item.answer or "", "id": item.id, "benchmark": name, "split": split,
                   "source": f"{path.name} sha256:{digest}", "item": item.record}
    if not found:
        raise AdapterError(f"{name}: no {name} metadata file ({pattern}) under {root} (point --root at the "
                           "folder that holds it and its audio)")


def mmau(root: Path) -> Iterator[dict[str, Any] | str]:
    """MMAU: every MMAU JSON file in the root (test-mini, test; either release), audio as named."""
    return _rows("mmau", root, "*.json")


def mmar(root: Path) -> Iterator[dict[str, Any] | str]:
    """MMAR: ``MMAR-meta.json`` or ``.jsonl``, audio as named."""
    return _rows("mmar", root, "*.json*")


def air_bench(root: Path) -> Iterator[dict[str, Any] | str]:
    """AIR-Bench foundation: ``Foundation_meta.json`` (in the root or ``Foundation/``), audio in
    ``{task_name}_{dataset_name}/`` beside it."""
    folder = root / "Foundation" if (root / "Foundation").is_dir() else root
    return _rows("air-bench", folder, "*.json")
