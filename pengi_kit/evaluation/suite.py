"""Evaluation suites: many tasks from one TOML file, one table, JSON and Markdown.

A suite file (``recipes/eval/pengi_paper.toml``)::

    name = "pengi-paper"
    data_root = "data"              # manifests are relative to it (--data-root overrides)

    [[task]]
    name = "AudioCaps captioning"   # the row label
    task = "captioning"             # a registered task: captioning | aqa | classification | retrieval
                                    # | linear-probe, or a plugin's (`pengi-kit list-components --kind task`)
    manifest = "audiocaps/test.jsonl"
    metrics = ["SPIDEr", "CIDEr-D"] # the table's rows (default: every metric)
    published = { SPIDEr = 0.467 }  # Pengi's published figures, shown beside ours
    prepare = "pengi-kit data prepare audiocaps ..."   # how to make a missing manifest

and optionally ``dataset``, ``source`` (where the published figures were read),
``train_manifest``, ``classes`` (a file with one class name per line), ``multi_label``,
``scoring``, ``matcher``, ``prompt`` and ``limit``. A task whose manifest is missing is
reported as skipped with its ``prepare`` hint; one that fails is reported and the others run.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pengi_kit.errors import PengiKitError
from pengi_kit.evaluation.tasks import Result, evaluate
from pengi_kit.plugins import registry

__all__ = ["TaskSpec", "load_suite", "run_suite", "table", "markdown", "evaluation_card", "write_report",
           "reproduce"]

_KEYS = {"name": str, "task": str, "manifest": str, "dataset": str, "metrics": list, "published": dict,
         "source": str, "prepare": str, "train_manifest": str, "classes": str, "multi_label": bool,
         "scoring": str, "matcher": str, "prompt": str, "limit": int}
_OPTIONS = ("train_manifest", "classes", "multi_label", "scoring", "matcher", "prompt", "limit")


@dataclass
class TaskSpec:
    """One task of a suite (or of a single ``--task`` run) and, once run, its outcome."""

    name: str
    task: str
    manifest: str
    dataset: str = ""
    metrics: list[str] = field(default_factory=list)
    published: dict[str, float] = field(default_factory=dict)
    source: str = ""
    prepare: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    result: Result | None = None
    status: str = "not run"  # ok | skipped: ... | failed: ...


def load_suite(path: str | Path, data_root: str | Path | None = None) -> tuple[str, list[TaskSpec]]:
    """The suite's name and tasks, manifest paths resolved; every key is checked. ``path`` may
    name a shipped suite (``eval/demo``, ``eval/pengi_paper``: ``pengi-kit recipes`` lists them)."""
    from pengi_kit.recipe import shipped_recipes

    path = Path(path) if Path(path).exists() else shipped_recipes().get(str(path).removesuffix(".toml"), Path(path))
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PengiKitError(f"{path}: suite not found (check the path)") from None
    except tomllib.TOMLDecodeError as exc:
        raise PengiKitError(f"{path}: not valid TOML: {exc}") from None
    extra = set(doc) - {"name", "description", "data_root", "task"}
    if extra:
        raise PengiKitError(f"{path}: unknown top-level key(s) {sorted(extra)} (allowed: name, description, "
                            "data_root, [[task]])")
    if not doc.get("task"):
        raise PengiKitError(f"{path}: no [[task]] tables")
    root = Path(data_root if data_root is not None else doc.get("data_root", "."))
    specs = []
    for n, table in enumerate(doc["task"], 1):
        where = f"{path}: task {n} ({table.get('name', 'unnamed')})"
        for key, value in table.items():
            if key not in _KEYS:
                close = difflib.get_close_matches(key, _KEYS, n=1)
                raise PengiKitError(f"{where}: unknown key {key!r} ({f'did you mean {close[0]!r}? ' if close else ''}"
                                    f"keys: {', '.join(_KEYS)})")
            if not isinstance(value, _KEYS[key]) or (_KEYS[key] is int and isinstance(value, bool)):
                kind = {str: "string", int: "integer", bool: "boolean", list: "list", dict: "table"}[_KEYS[key]]
                raise PengiKitError(f"{where}: {key} must be of type {kind}, got {value!r}")
        for key in ("name", "task", "manifest"):
            if key not in table:
                raise PengiKitError(f"{where}: missing {key!r}")
        registry().get("task", table["task"], where=where)  # unknown: "did you mean", before any model loads
        options = {k: table[k] for k in _OPTIONS if k in table}
        for key in ("train_manifest", "classes"):
            if key in options:
                options[key] = str(root / options[key])
        specs.append(TaskSpec(table["name"], table["task"], str(root / table["manifest"]), table.get("dataset", ""),
                              list(table.get("metrics", [])), dict(table.get("published", {})),
                              table.get("source", ""), table.get("prepare", ""), options))
    return doc.get("name", path.stem), specs


def run_suite(pengi: Any, specs: list[TaskSpec], **common: Any) -> list[TaskSpec]:
    """Run every task (``common``: on_error, batch_size, decoding settings); never stops at one."""
    from pengi_kit.progress import say

    for spec in specs:
        options = dict(spec.options)
        classes = options.pop("classes", None)
        if classes is not None:
            try:
                options["classes"] = [c.strip() for c in Path(classes).read_text().splitlines() if c.strip()]
            except FileNotFoundError:
                spec.status = f"skipped: classes file {classes} not found"
                continue
        missing = [p for p in (spec.manifest, options.get("train_manifest")) if p and not Path(p).exists()]
        if missing:
            hint = f"make it: {spec.prepare}" if spec.prepare.startswith("pengi-kit") else spec.prepare
            spec.status = f"skipped: {missing[0]} not found" + (f" ({hint})" if hint else "")
            continue
        say(f"[{spec.name}] {spec.task} on {spec.manifest}")
        try:
            spec.result = evaluate(pengi, spec.task, spec.manifest, **options, **common)
            spec.status = "ok"
        except PengiKitError as exc:
            spec.status = f"failed: {exc}"
    return specs


def _rows(specs: list[TaskSpec]) -> list[tuple[str, str, str, str]]:
    """(task, metric, ours, published) rows of the table."""
    rows = []
    for spec in specs:
        label = spec.name + (f" ({spec.dataset})" if spec.dataset and spec.dataset not in spec.name else "")
        result = spec.result
        if result is None:
            names = spec.metrics or list(spec.published) or ["-"]
            rows += [(label, m, spec.status, _fmt(spec.published.get(m))) for m in names]
            continue
        names = spec.metrics or list(result.metrics) + [m for m in result.unavailable if m not in result.metrics]
        for m in names:
            if m in result.metrics:
                ours = _fmt(result.metrics[m])
            elif m in result.unavailable:
                ours = f"unavailable: {result.unavailable[m]}"
            else:
                ours = f"not computed by {spec.task} (metrics: {', '.join(result.metrics)})"
            rows.append((label, m, ours, _fmt(spec.published.get(m))))
    return rows


def _fmt(value: float | None) -> str:
    return "" if value is None else ("nan" if math.isnan(value) else f"{value:.4f}")


def table(specs: list[TaskSpec], width: int = 40) -> str:
    """The results as an aligned text table; messages longer than ``width`` become notes below it."""
    notes: list[str] = []
    rows = [("task", "metric", "ours", "published")]
    for label, metric, ours, published in _rows(specs):
        if len(ours) > width:
            if ours not in notes:
                notes.append(ours)
            ours = f"{ours.split(':')[0]} [{notes.index(ours) + 1}]"
        rows.append((label, metric, ours, published))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines + [""] * bool(notes) + [f"[{n}] {note}" for n, note in enumerate(notes, 1)])


def markdown(name: str, specs: list[TaskSpec], checkpoint: str) -> str:
    out = [f"# {name}: {checkpoint}", "", "| task | metric | ours | published |", "|---|---|---|---|"]
    out += [f"| {' | '.join(c.replace('|', '/') for c in r)} |" for r in _rows(specs)]
    problems = [(s.name, p) for s in specs if s.result for p in s.result.problems]
    if problems:
        out += ["", f"{len(problems)} problem(s) left examples out of the scores:", ""]
        out += [f"- {n}: {p}" for n, p in problems]
    sources = sorted({s.source for s in specs if s.source and s.published})
    if sources:
        out += ["", "Published figures read from: " + "; ".join(sources) + "."]
    return "\n".join(out) + "\n"


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def evaluation_card(pengi: Any, checkpoint: str, **common: Any) -> dict[str, Any]:
    """What it takes to reproduce a result (``results.json``'s ``card``): the checkpoint and the
    sha256 of its weight files, the decoding settings in full (the recipe's, then ``common``'s),
    batch size, error policy, device, dtype and the versions of the software that ran."""
    import platform
    from dataclasses import fields as dataclass_fields
    from importlib.metadata import PackageNotFoundError, version

    from pengi_kit.checkpoint import folder, resolve
    from pengi_kit.decoding import Decoding

    names = {f.name for f in dataclass_fields(Decoding)}
    decoding = asdict(pengi.decoding(**{k: v for k, v in common.items() if k in names}))
    target = folder(checkpoint)
    target = resolve(target) if (target / "checkpoints").is_dir() else target  # a run: its newest checkpoint
    weights = {p.name: _sha256(p) for p in sorted(target.iterdir())
               if p.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt")}
    versions = {"python": platform.python_version()}
    for package in ("pengi-kit", "torch", "transformers", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"checkpoint": str(checkpoint), "weights": str(target), "weights_sha256": weights, "decoding": decoding,
            "batch_size": common.get("batch_size"), "on_error": common.get("on_error"), "device": str(pengi.device),
            "dtype": str(next(pengi.model.parameters()).dtype).removeprefix("torch."), "versions": versions}


def write_report(out: str | Path, name: str, specs: list[TaskSpec], checkpoint: str,
                 card: dict[str, Any] | None = None) -> list[Path]:
    """``results.json`` (with the evaluation ``card`` and each task's manifest sha256),
    ``results.md`` and ``predictions/<task>.jsonl`` under ``out``."""
    out = Path(out)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    report = {"suite": name, "checkpoint": checkpoint, **({"card": card} if card else {}), "tasks": []}
    written = []
    for n, spec in enumerate(specs):
        entry = {k: v for k, v in asdict(spec).items() if k != "result"}
        if Path(spec.manifest).is_file():
            entry["manifest_sha256"] = _sha256(spec.manifest)
        if spec.result is not None:
            entry.update({k: v for k, v in asdict(spec.result).items() if k != "predictions"})
            slug = "".join(c if c.isalnum() else "_" for c in spec.name.lower()).strip("_") or f"task{n}"
            path = out / "predictions" / f"{n:02d}_{slug}.jsonl"
            path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in spec.result.predictions))
            entry["predictions_file"] = str(path.relative_to(out))
            written.append(path)
        report["tasks"].append(entry)
    (out / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(markdown(name, specs, checkpoint))
    return [out / "results.json", out / "results.md", *written]


def reproduce(results: str | Path, device: str | None = None) -> tuple[list[TaskSpec], list[str], list[str]]:
    """Run again what a ``results.json`` with a card describes (same checkpoint, manifests,
    options, decoding, batch size, device unless ``device``) and compare. Returns the new specs,
    what differs in what ran (weights, device, dtype, software versions) and what differs in
    what came out (manifests, items, metrics: equal to the last bit), one line each."""
    import pengi_kit

    path = Path(results)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PengiKitError(f"{path}: cannot read the results: {exc}") from None
    card = report.get("card")
    if not card:
        raise PengiKitError(f"{path}: no evaluation card (results written before pengi-kit recorded one; "
                            "rerun the evaluation with --out)")
    specs = [TaskSpec(t["name"], t["task"], t["manifest"], t.get("dataset", ""), t.get("metrics", []),
                      t.get("published", {}), t.get("source", ""), t.get("prepare", ""), t.get("options", {}))
             for t in report["tasks"]]
    pengi = pengi_kit.load(card["checkpoint"], device=device or card["device"])
    common = {"on_error": card["on_error"], "batch_size": card["batch_size"], **card["decoding"]}
    now = evaluation_card(pengi, card["checkpoint"], **common)
    setting = [f"{key}: {card[key]} then, {now[key]} now"
               for key in ("weights_sha256", "decoding", "device", "dtype", "versions") if card[key] != now[key]]
    differences = []
    run_suite(pengi, specs, **common)
    for old, spec in zip(report["tasks"], specs):
        if old.get("manifest_sha256") and Path(spec.manifest).is_file() and old["manifest_sha256"] != _sha256(
                spec.manifest):
            differences.append(f"[{spec.name}] {spec.manifest} has changed (sha256)")
        metrics = spec.result.metrics if spec.result else {}
        for name in sorted(set(old.get("metrics", {})) | set(metrics)):
            then, now_value = old.get("metrics", {}).get(name), metrics.get(name)
            both_nan = isinstance(then, float) and isinstance(now_value, float) and math.isnan(then) and math.isnan(
                now_value)
            if then != now_value and not both_nan:
                differences.append(f"[{spec.name}] {name}: {then} then, {now_value} now")
        if old.get("status") != spec.status:
            differences.append(f"[{spec.name}] {old.get('status')} then, {spec.status} now")
    return specs, setting, differences
