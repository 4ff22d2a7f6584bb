"""Multiple-choice scoring: each benchmark's official rule, item by item, and a strict one.

Torch-free, so that ``pengi-kit evaluate --task multiple-choice --predictions FILE`` scores a
file of answers made by any model without loading one. The model-side task (generation and
likelihood scoring) is :func:`pengi_kit.evaluation.tasks.multiple_choice`; docs/evaluation.md
explains the three scorers.

- :func:`string_match` is MMAU's and MMAR's rule: lowercase, the *set* of ``\\b\\w+\\b`` tokens;
  right when the prediction's set is non-empty, holds every token of the answer, and none of
  the tokens that a wrong choice has and the answer has not (a wrong choice with the answer's
  very token set is ignored).
- :func:`letter` is AIR-Bench foundation's: strip, remove newlines; the first character if it is
  A-D, else the second-to-last if it is A-D, else unparsed (its script leaves those out of the
  denominator; both figures are reported). Its GPT alignment stage is not reproduced.
- :func:`strict`: the text must be one choice (case, spacing and punctuation aside), its
  letter, or its letter followed by that choice; anything else is unparsed and wrong.

Items without a prediction: the MMAU and MMAR scripts skip them (their figure), and they are
also counted wrong (the second figure), with their count.
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pengi_kit.data.benchmarks import LETTERS, Benchmark, Item
from pengi_kit.errors import PengiKitError

__all__ = ["string_match", "letter", "strict", "Scores", "official", "strict_scores", "score_file",
           "score_predictions", "report_lines"]

#: bumped whenever a scorer's behaviour changes; results.json records it
SCORER_VERSION = 1


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """MMAU's and MMAR's official rule (their ``evaluation.py``)."""
    said, right = _tokens(prediction), _tokens(answer)
    if not said:
        return False
    wrong: set[str] = set()
    for choice in choices:
        tokens = _tokens(choice)
        if tokens != right:
            wrong |= tokens - right
    return right <= said and said.isdisjoint(wrong)


def letter(response: str) -> str | None:
    """AIR-Bench foundation's reading of a response (``score_foundation.py``): A-D, or None."""
    text = response.strip().replace("\n", "")
    if not text or text == "None":
        return None
    if text[0] in "ABCD":
        return text[0]
    if len(text) > 1 and text[-2] in "ABCD":
        return text[-2]
    return None


_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def _normal(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def strict(prediction: str, choices: Sequence[str]) -> int | None:
    """The index of the choice that ``prediction`` is, or None: the choice's text, its letter
    ("B", "(B)", "B."), or its letter then its text ("B. Woman"), after lowercasing and
    replacing punctuation with spaces. Never a guess."""
    said = _normal(prediction)
    texts = [_normal(c) for c in choices]
    if said in texts and texts.count(said) == 1:
        return texts.index(said)
    head, _, rest = said.partition(" ")
    if len(head) == 1 and head.upper() in LETTERS[: len(choices)]:
        index = LETTERS.index(head.upper())
        if not rest or rest == texts[index]:
            return index
    return None


@dataclass
class Scores:
    """A scorer's outcome: ``metrics`` (fractions), the breakdowns' ``(correct, counted)`` per
    group, counts, and one record per item (``id``, ``match``, ``parsed``, ``scorer``)."""

    scorer: str
    metrics: dict[str, float] = field(default_factory=dict)
    groups: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)


def _answer_letter(bench: Benchmark, item: Item) -> str:
    """AIR-Bench's ground-truth letter: the first choice whose text equals ``answer_gt`` exactly."""
    for i, choice in enumerate(item.choices):
        if choice == item.answer:
            return LETTERS[i]
    raise PengiKitError(f"{bench.name} item {item.id}: answer {item.answer!r} is none of its choices "
                        f"{item.choices} (the official script stops here too)")


def official(bench: Benchmark, items: Sequence[Item], predictions: Sequence[str | None]) -> Scores:
    """The benchmark's own rule over items with answers (``None``: no prediction)."""
    out = Scores("official")
    for name, seeded in bench.groups:
        out.groups[name] = {value: [0, 0] for value in seeded}
    correct = counted = missing = unparsed = 0
    for item, said in zip(items, predictions):
        if item.answer is None:
            continue
        record: dict[str, Any] = {"id": item.id, "scorer": "official"}
        if said is None:
            missing += 1
            out.items.append({**record, "match": 0, "parsed": None, "missing": True})
            continue
        cells = [out.groups[name].setdefault(item.groups[name], [0, 0]) for name, _ in bench.groups
                 if name in item.groups]  # listed in the order first seen, as the scripts do
        if bench.rule == "letter":
            parsed = letter(said)
            if parsed is None:
                unparsed += 1
                out.items.append({**record, "match": 0, "parsed": None})
                continue
            match = parsed == _answer_letter(bench, item)
        else:
            match, parsed = string_match(item.answer, said, item.choices), None
            if match:
                parsed = item.answer
        counted += 1
        correct += match
        for cell in cells:
            cell[0] += match
            cell[1] += 1
        out.items.append({**record, "match": int(match), "parsed": parsed})
    everyone = counted + missing + unparsed
    out.counts = {"items": everyone, "scored": counted, "missing": missing, "unparsed": unparsed}
    if bench.rule == "letter":
        tasks = [c / n for c, n in out.groups["task_dataset"].values() if n]
        out.metrics = {"accuracy (official, unparsed dropped)": correct / counted if counted else 0.0,
                       "accuracy (official, unparsed wrong)": correct / everyone if everyone else 0.0,
                       "mean over task_datasets (unparsed dropped)": sum(tasks) / len(tasks) if tasks else 0.0}
    else:
        out.metrics = {"accuracy (official)": correct / counted if counted else 0.0,
                       "accuracy (official, missing counted wrong)": correct / everyone if everyone else 0.0}
    return out


def strict_scores(items: Sequence[Item], predictions: Sequence[str | None]) -> Scores:
    """:func:`strict` over items with answers; unparsed and missing count wrong."""
    out = Scores("strict")
    correct = unparsed = total = 0
    for item, said in zip(items, predictions):
        if item.answer is None:
            continue
        total += 1
        index = None if said is None else strict(said, item.choices)
        unparsed += index is None
        match = index is not None and item.choices[index] == item.answer
        correct += match
        out.items.append({"id": item.id, "scorer": "strict", "match": int(match),
                          "parsed": None if index is None else item.choices[index]})
    out.counts = {"items": total, "unparsed": unparsed}
    out.metrics = {"accuracy (strict)": correct / total if total else 0.0}
    return out


def report_lines(bench: Benchmark, scores: Scores) -> list[str]:
    """What the benchmark's official script prints for these scores (MMAU/MMAR: percentages
    with two decimals per breakdown, then the total; AIR-Bench: each task_dataset's raw
    fraction, the parsed count and the failures), then the figures it does not print."""
    if bench.rule == "letter":
        lines = [f"{task}: Sum={n}, correct={c}, acc={c / n}"
                 for task, (c, n) in scores.groups["task_dataset"].items() if n]
        lines += [f"total_sum: {scores.counts['scored']}", f"fail_num: {scores.counts['unparsed']}"]
        m = scores.metrics
        lines += ["(not printed by the official script:)",
                  f"accuracy, unparsed dropped: {m['accuracy (official, unparsed dropped)']:.4f}; unparsed counted "
                  f"wrong: {m['accuracy (official, unparsed wrong)']:.4f}; mean over task_datasets: "
                  f"{m['mean over task_datasets (unparsed dropped)']:.4f}; items without a prediction: "
                  f"{scores.counts['missing']}"]
        return lines
    titles = {"task": "Task", "difficulty": "Difficulty", "sub-category": "Sub-category", "modality": "Modality",
              "category": "Category"}
    lines = []
    for name, cells in scores.groups.items():
        lines += ["*" * 30, f"{titles.get(name, name)}-wise Accuracy:"]
        lines += [f"{value} : {(c / n * 100 if n else 0):.2f}% over {n} samples" for value, (c, n) in cells.items()]
    n = scores.counts["scored"]
    lines += ["*" * 30, f"Total Accuracy: {scores.metrics['accuracy (official)'] * 100:.2f}% over {n} samples",
              "*" * 30, f"No prediction count: {scores.counts['missing']} (the official script skips these and "
              f"prints 0; counted wrong: {scores.metrics['accuracy (official, missing counted wrong)'] * 100:.2f}%)"]
    return lines


def predictions_of(items: Sequence[Item], key: str) -> list[str | None]:
    """Each item's prediction under ``key`` (None where absent); a non-text value is an error."""
    out: list[str | None] = []
    for item in items:
        value = item.record.get(key)
        if value is not None and not isinstance(value, str):
            raise PengiKitError(f"item {item.id}: {key!r} is not a text ({type(value).__name__})")
        out.append(value)
    return out


def score_file(path: str | Path, benchmark: str | None = None, key: str | None = None
               ) -> tuple[Benchmark, list[Item], Scores, Scores]:
    """Score a benchmark file that holds a model's answers under ``key`` (default: the key the
    benchmark's script reads): (benchmark, items, official scores, strict scores)."""
    from pengi_kit.data.benchmarks import read_items

    bench, items = read_items(path, benchmark)
    key = key or bench.key
    predictions = predictions_of(items, key)
    if all(p is None for p in predictions):
        raise PengiKitError(f"{path}: no item has a prediction under {key!r} (give its key with --prediction-key)")
    if all(item.answer is None for item in items):
        raise PengiKitError(f"{path}: no item has an answer to score against (the test split's answers are not "
                            "public: upload the file to the benchmark's leaderboard)")
    return bench, items, official(bench, items, predictions), strict_scores(items, predictions)


def score_predictions(path: str | Path, *, benchmark: str | None = None, key: str | None = None,
                      out: str | Path | None = None) -> tuple[list[str], list[Path]]:
    """Score a benchmark file of answers made elsewhere (``pengi-kit evaluate --predictions``):
    the lines its official script prints, then the strict figure; with ``out``, also
    ``results.json`` (figures, counts, breakdowns, the rule's source and version) and
    ``items.jsonl`` (one line per item and scorer: ``id``, ``scorer``, ``match``, ``parsed``).
    Returns (lines, files written). Loads no model and no torch."""
    bench, items, official, strict = score_file(path, benchmark, key)
    lines = report_lines(bench, official)
    lines.append(f"strict: {strict.metrics['accuracy (strict)'] * 100:.2f}% ({strict.counts['unparsed']} of "
                 f"{strict.counts['items']} answers are no choice or letter)")
    if out is None:
        return lines, []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"task": "multiple-choice", "benchmark": bench.name, "predictions": str(path),
               "prediction_key": key or bench.key, "rule": bench.source, "scorer_version": SCORER_VERSION,
               "metrics": official.metrics | strict.metrics, "counts": official.counts,
               "strict_unparsed": strict.counts["unparsed"], "groups": official.groups}
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for s in (official, strict) for r in s.items)
    return lines, [out / "results.json", out / "items.jsonl"]
