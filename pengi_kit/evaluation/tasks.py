"""The downstream tasks of the Pengi paper, each run on a loaded model and a manifest.

Every task reads a manifest (:mod:`pengi_kit.data.manifest`), groups its rows by clip,
asks the model, and scores the answers with :mod:`~pengi_kit.evaluation.metrics` and
:mod:`~pengi_kit.evaluation.scores`. Bad manifest lines and unreadable clips are
reported in :attr:`Result.problems` and left out of the scores (``on_error="skip"``) or
stop the run (``"fail"``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pengi_kit.api import Clip, Pengi
from pengi_kit.data.manifest import read_manifest
from pengi_kit.errors import PengiKitError
from pengi_kit.evaluation import java, scores
from pengi_kit.evaluation.metrics import caption_metrics, tokenize
from pengi_kit.plugins import registry

__all__ = ["Result", "evaluate"]


@dataclass
class Result:
    """A task's scores (``metrics``), the metrics that could not run with the reason
    (``unavailable``), per-clip outputs (``predictions``) and what was left out (``problems``)."""

    task: str
    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Group:
    """The manifest rows about one clip (and, for question answering, one prompt)."""

    clip: Clip
    prompt: str
    texts: list[str]
    fields: dict[str, Any]


def _read(manifest: str | Path, result: Result, on_error: str, limit: int | None,
          by_prompt: bool = False) -> list[_Group]:
    examples, bad = read_manifest(manifest, on_error="fail" if on_error == "fail" else "skip")
    result.problems += bad
    groups: dict[tuple, _Group] = {}
    for ex in examples:
        key = (str(ex.audio), ex.start, ex.end) + ((ex.prompt,) if by_prompt else ())
        group = groups.get(key)
        if group is None:
            if limit is not None and len(groups) >= limit:
                continue
            group = groups[key] = _Group(Clip(str(ex.audio), ex.start, ex.end), ex.prompt, [], dict(ex.fields))
        group.texts.append(ex.text)
    if not groups:
        raise PengiKitError(f"{manifest}: no usable rows ({bad[0]})" if bad else f"{manifest}: empty")
    return list(groups.values())


def _on_error(on_error: str, result: Result) -> Callable[[Any, Exception], None] | str:
    if on_error == "fail":
        return "raise"

    def report(item: Any, exc: Exception) -> None:
        where = item.path if isinstance(item, Clip) else item
        result.problems.append(f"{where}: {exc} (left out of the scores)")
    return report


def _generate(pengi: Pengi, groups: list[_Group], result: Result, on_error: str, decoding: dict[str, Any],
              batch_size: int, prompt: str | None = None) -> list[tuple[_Group, str]]:
    """(group, generated text) for every group whose clip could be read."""
    texts = pengi.generate([g.clip for g in groups], [prompt or g.prompt for g in groups], batch_size=batch_size,
                           progress=None, on_error=_on_error(on_error, result), **decoding)
    return _usable([(g, t) for g, t in zip(groups, texts) if t is not None], result)


def _usable(items: list, result: Result) -> list:
    if not items:
        raise PengiKitError(f"no clip could be read ({result.problems[-1] if result.problems else 'empty'})")
    return items


def _scored(groups: list[_Group], matrix: torch.Tensor, result: Result) -> tuple[list[_Group], torch.Tensor]:
    """The groups, and their rows of ``matrix``, whose clips loaded (a skipped clip's row is NaN)."""
    kept = ~torch.isnan(matrix).any(dim=1)
    return _usable([g for g, k in zip(groups, kept.tolist()) if k], result), matrix[kept]


# ---------------------------------------------------------------------------- captioning
def captioning(pengi: Pengi, manifest: str | Path, *, on_error: str = "skip", limit: int | None = None,
               batch_size: int = 32, prompt: str | None = None, **decoding: Any) -> Result:
    """One caption per clip (the rows' prompt, ``generate audio caption`` for ``task = "caption"``),
    scored against all of the clip's rows: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr."""
    result = Result("captioning")
    pairs = _generate(pengi, _read(manifest, result, on_error, limit), result, on_error, decoding,
                      batch_size, prompt)
    preds = {i: text for i, (_, text) in enumerate(pairs)}
    refs = {i: g.texts for i, (g, _) in enumerate(pairs)}
    result.metrics = caption_metrics(preds, refs)
    cands = [" ".join(tokenize(preds[i])) for i in preds]
    ref_tokens = [[" ".join(tokenize(r)) for r in refs[i]] for i in preds]
    for name, run in (("METEOR", java.meteor), ("SPICE", java.spice)):
        try:
            result.metrics[name] = run(cands, ref_tokens)
        except java.Unavailable as exc:
            result.unavailable[name] = str(exc)
    if "SPICE" in result.metrics:
        result.metrics["SPIDEr"] = (result.metrics["CIDEr-D"] + result.metrics["SPICE"]) / 2
    else:
        result.unavailable["SPIDEr"] = "needs SPICE"
    result.predictions = [{"audio": g.clip.path, "prompt": prompt or g.prompt, "output": t, "references": g.texts}
                          for g, t in pairs]
    return result


# ---------------------------------------------------------------------------- question answering
def aqa(pengi: Pengi, manifest: str | Path, *, on_error: str = "skip", limit: int | None = None,
        batch_size: int = 32, prompt: str | None = None, **decoding: Any) -> Result:
    """Accuracy of the answer to each (clip, question), after :func:`~.scores.normalize_answer`;
    correct if it matches any of the rows' answers. Also by answer type (the rows'
    ``answer_type``, else yes/no when every answer is yes or no, else open). When questions have
    several answers (Clotho-AQA keeps each annotator's), also against the majority answer and
    over the questions whose annotators agree (:func:`~.scores.agreed_answers`), with counts."""
    result = Result("aqa")
    pairs = _generate(pengi, _read(manifest, result, on_error, limit, by_prompt=True), result, on_error,
                      decoding, batch_size, prompt)
    by_type: dict[str, list[bool]] = {}
    by_rule: dict[str, list[bool]] = {"majority": [], "unanimous": []}
    for g, text in pairs:
        correct = scores.answer_correct(text, g.texts)
        kind = g.fields.get("answer_type") or (
            "yes/no" if {scores.normalize_answer(t) for t in g.texts} <= {"yes", "no"} else "open")
        by_type.setdefault(str(kind), []).append(correct)
        for rule, refs in scores.agreed_answers(g.texts).items():
            if rule != "any":
                by_rule[rule].append(scores.answer_correct(text, refs))
        result.predictions.append({"audio": g.clip.path, "prompt": g.prompt, "output": text,
                                   "references": g.texts, "correct": correct, "answer_type": kind})
    every = [c for cs in by_type.values() for c in cs]
    result.metrics["accuracy"] = sum(every) / len(every)
    for kind in sorted(by_type):
        result.metrics[f"accuracy ({kind})"] = sum(by_type[kind]) / len(by_type[kind])
    if any(len(g.texts) > 1 for g, _ in pairs):  # one answer per question: every rule gives the same figure
        for rule, marks in by_rule.items():
            if marks:
                result.metrics[f"accuracy ({rule})"] = sum(marks) / len(marks)
            result.info[f"questions ({rule})"] = len(marks)
    return result


# ---------------------------------------------------------------------------- classification
def _labels(groups: list[_Group], classes: Sequence[str] | None, multi_label: bool | None
            ) -> tuple[list[str], torch.Tensor, bool]:
    """The class names, a (clips, classes) 0/1 label matrix and whether it is multi-label.

    A clip's labels are its rows' texts, each split at ``", "`` when ``multi_label``; with
    ``multi_label=None`` the task is multi-label when some clip has rows with different labels.
    """
    per_clip = [[t.strip() for text in g.texts for t in (text.split(",") if multi_label else [text])]
                for g in groups]
    if multi_label is None:
        multi_label = any(len(set(ls)) > 1 for ls in per_clip)
    classes = list(classes) if classes else sorted({label for ls in per_clip for label in ls})
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.zeros(len(groups), len(classes))
    for row, ls in enumerate(per_clip):
        for label in ls:
            if label not in index:
                raise PengiKitError(f"label {label!r} of {groups[row].clip.path} is not among the {len(classes)} "
                                    "classes (add it to the --classes file)")
            labels[row, index[label]] = 1
    return classes, labels, multi_label


def _class_scores(labels: torch.Tensor, matrix: torch.Tensor, multi_label: bool) -> dict[str, float]:
    if multi_label:
        return {"mAP": scores.mean_average_precision(matrix, labels)}
    return {"accuracy": scores.accuracy(matrix, labels.argmax(1))}


def text_matcher(pengi: Pengi, matcher: str) -> tuple[str, Callable[[list[str], list[str]], torch.Tensor]]:
    """(name, function giving a (texts, classes) similarity matrix) for ``matcher``:
    ``text-encoder`` (cosine of the model's text embeddings, Pengi's way), ``words``
    (:func:`~.scores.word_similarity`) or ``auto`` (the text encoder when the model has one)."""
    if matcher == "auto":
        matcher = "text-encoder" if pengi.model.text_encoder is not None else "words"
    if matcher == "text-encoder":
        if pengi.model.text_encoder is None:
            raise PengiKitError("this model has no text encoder to embed class names (use --matcher words)")

        def encode(texts: list[str], classes: list[str]) -> torch.Tensor:
            a = torch.nn.functional.normalize(pengi.embed_text(texts).float(), dim=-1)
            b = torch.nn.functional.normalize(pengi.embed_text(classes).float(), dim=-1)
            return (a @ b.T).cpu()
        return matcher, encode
    if matcher == "words":
        return matcher, lambda texts, classes: torch.tensor(
            [[scores.word_similarity(t, c) for c in classes] for t in texts], dtype=torch.float64)
    raise PengiKitError(f"unknown matcher {matcher!r} (use auto, text-encoder or words)")


#: zero-shot classification by embedding compares each clip with the text "<CLASS_PROMPT> <class>"
CLASS_PROMPT = "this is a sound of"


def classification(pengi: Pengi, manifest: str | Path, *, scoring: str = "auto", matcher: str = "auto",
                   classes: Sequence[str] | None = None, multi_label: bool | None = None,
                   on_error: str = "skip", limit: int | None = None, batch_size: int = 32,
                   prompt: str | None = None, **decoding: Any) -> Result:
    """Zero-shot classification; accuracy (single-label) or mAP (multi-label).

    ``scoring="generate"``: Pengi's way, generate with the rows' prompt (``this is a sound of``
    for ``task = "classification"``) and score each class by the similarity of the text to
    the class name (``matcher``). ``scoring="likelihood"``: score each class name by its mean
    token log-probability as the answer. ``scoring="embedding"``: CLAP's way, score each class
    by the cosine similarity of the clip's embedding to that of the text
    ``"<prompt> <class>"`` (``prompt`` defaults to :data:`CLASS_PROMPT`, as LAION-CLAP and
    Microsoft CLAP ask); needs a text encoder. ``"auto"``: embedding for a model that does
    not generate (a CLAP model), else generate.
    """
    result = Result("classification")
    groups = _read(manifest, result, on_error, limit)
    if scoring == "auto":
        scoring = "generate" if pengi.generates else "embedding"
    if scoring == "embedding":
        if pengi.model.text_encoder is None:
            raise PengiKitError("this model has no text encoder to embed class texts (use --scoring generate or "
                                "likelihood)")
        audio = pengi.embed_audio([g.clip for g in groups], batch_size=batch_size,
                                  on_error=_on_error(on_error, result))
        groups, audio = _scored(groups, audio, result)
        class_names, labels, multi = _labels(groups, classes, multi_label)
        asked = prompt or CLASS_PROMPT
        text = torch.nn.functional.normalize(pengi.embed_text([f"{asked} {c}" for c in class_names]).float().cpu(),
                                             dim=-1)
        matrix = torch.nn.functional.normalize(audio, dim=-1) @ text.T
        result.info["prompt"] = asked
        outputs = [class_names[i] for i in matrix.argmax(1)]
    elif scoring == "generate":
        name, match = text_matcher(pengi, matcher)
        pairs = _generate(pengi, groups, result, on_error, decoding, batch_size, prompt)
        groups = [g for g, _ in pairs]
        class_names, labels, multi = _labels(groups, classes, multi_label)
        matrix = match([t for _, t in pairs], class_names)
        result.info["matcher"] = name
        outputs = [t for _, t in pairs]
    elif scoring == "likelihood":
        class_names = _labels(groups, classes, multi_label)[0]
        asked = prompt or groups[0].prompt
        matrix = pengi.log_likelihood([g.clip for g in groups], asked, class_names, batch_size=batch_size,
                                      progress=None, on_error=_on_error(on_error, result))
        groups, matrix = _scored(groups, matrix, result)
        class_names, labels, multi = _labels(groups, class_names, multi_label)
        outputs = [class_names[i] for i in matrix.argmax(1)]
    else:
        raise PengiKitError(f"unknown classification scoring {scoring!r} (use generate, likelihood or embedding)")
    result.info.update(scoring=scoring, classes=len(class_names), multi_label=multi)
    result.metrics = _class_scores(labels, matrix, multi)
    top = matrix.argmax(1)
    result.predictions = [{"audio": g.clip.path, "output": out, "top_class": class_names[i], "labels": g.texts}
                          for g, out, i in zip(groups, outputs, top.tolist())]
    return result


# ---------------------------------------------------------------------------- retrieval
def retrieval(pengi: Pengi, manifest: str | Path, *, scoring: str = "auto", on_error: str = "skip",
              limit: int | None = None, batch_size: int = 32, prompt: str | None = None, **_: Any) -> Result:
    """Text-to-audio and audio-to-text retrieval over a captioning manifest: R@1/5/10, mAP@10.

    ``scoring="embedding"`` ranks by the cosine of the projected audio and text embeddings
    (needs a text encoder); ``"likelihood"`` by the caption's mean token log-probability
    given the clip; ``"auto"`` picks the first that the model supports.
    """
    result = Result("retrieval")
    groups = _read(manifest, result, on_error, limit)
    clips = [g.clip for g in groups]
    if scoring == "auto":
        scoring = "embedding" if pengi.model.text_encoder is not None else "likelihood"
    if scoring == "embedding":
        if pengi.model.text_encoder is None:
            raise PengiKitError("this model has no text encoder (use --scoring likelihood)")
        audio = pengi.embed_audio(clips, batch_size=batch_size, on_error=_on_error(on_error, result))
        groups, audio = _scored(groups, audio, result)
        captions = [t for g in groups for t in g.texts]
        text = torch.nn.functional.normalize(pengi.embed_text(captions).float().cpu(), dim=-1)
        similarity = torch.nn.functional.normalize(audio, dim=-1) @ text.T
    elif scoring == "likelihood":
        captions = [t for g in groups for t in g.texts]
        owner = torch.tensor([i for i, g in enumerate(groups) for _ in g.texts])
        similarity = pengi.log_likelihood(clips, prompt or groups[0].prompt, captions, batch_size=batch_size,
                                          progress=None, on_error=_on_error(on_error, result))
        loaded = ~torch.isnan(similarity).any(dim=1)  # captions of skipped clips leave the pool too
        groups, similarity = _scored(groups, similarity, result)
        similarity = similarity[:, loaded[owner]]
        captions = [c for c, keep in zip(captions, loaded[owner].tolist()) if keep]
    else:
        raise PengiKitError(f"unknown retrieval scoring {scoring!r} (use auto, embedding or likelihood)")
    owner = torch.tensor([i for i, g in enumerate(groups) for _ in g.texts])
    relevant = owner[None, :] == torch.arange(len(groups))[:, None]  # (clips, captions)
    result.info.update(scoring=scoring, clips=len(groups), captions=len(captions))
    for prefix, sim, rel in (("text-to-audio", similarity.T, relevant.T), ("audio-to-text", similarity, relevant)):
        result.metrics.update({f"{prefix} {k}": v for k, v in scores.retrieval_scores(sim, rel).items()})
    return result


# ---------------------------------------------------------------------------- linear probe
def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, multi_label: bool, l2: float = 1e-3,
                            steps: int = 100) -> Callable[[torch.Tensor], torch.Tensor]:
    """A linear classifier on standardised features, trained with L-BFGS on cross-entropy
    (or per-class binary cross-entropy when ``multi_label``) plus ``l2`` on the weights;
    returns a function from features to class scores."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = ((x - mean) / std).double()
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")
    target = y.double() if multi_label else y.argmax(1)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits if multi_label else torch.nn.functional.cross_entropy

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(x @ weight + bias, target) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return lambda feats: ((feats - mean) / std).double() @ weight + bias


def linear_probe(pengi: Pengi, manifest: str | Path, *, train_manifest: str | Path | None = None,
                 classes: Sequence[str] | None = None, multi_label: bool | None = None, on_error: str = "skip",
                 limit: int | None = None, batch_size: int = 32, **_: Any) -> Result:
    """Logistic regression on the audio encoder's embeddings of ``train_manifest``'s clips,
    scored on ``manifest``'s: accuracy, or mAP when multi-label."""
    if train_manifest is None:
        raise PengiKitError("the linear probe needs --train-manifest (the clips to fit the classifier on)")
    result = Result("linear-probe")
    handle = _on_error(on_error, result)

    def embedded(groups: list[_Group]) -> tuple[list[_Group], torch.Tensor]:
        return _scored(groups, pengi.embed_audio([g.clip for g in groups], batch_size=batch_size, progress=None,
                                                 projected=False, on_error=handle), result)

    train, train_feats = embedded(_read(train_manifest, result, on_error, None))
    test, test_feats = embedded(_read(manifest, result, on_error, limit))
    class_names, labels, multi = _labels(train + test, classes, multi_label)
    feats = torch.cat([train_feats, test_feats])
    predict = fit_logistic_regression(feats[:len(train)], labels[:len(train)], multi)
    matrix = predict(feats[len(train):])
    result.metrics = _class_scores(labels[len(train):], matrix, multi)
    result.info.update(train_clips=len(train), test_clips=len(test), classes=len(class_names), multi_label=multi)
    result.predictions = [{"audio": g.clip.path, "top_class": class_names[i], "labels": g.texts}
                          for g, i in zip(test, matrix.argmax(1).tolist())]
    return result


# ---------------------------------------------------------------------------- multiple choice
def multiple_choice(pengi: Pengi, manifest: str | Path, *, scoring: str = "auto", prompt: str | None = None,
                    export_predictions: str | Path | None = None, on_error: str = "skip", limit: int | None = None,
                    batch_size: int = 32, **decoding: Any) -> Result:
    """Multiple-choice questions (rows that ``pengi-kit data prepare mmau|mmar|air-bench`` wrote),
    scored three ways (:mod:`~pengi_kit.evaluation.multiple_choice`): the generated answer by the
    benchmark's ``official`` rule and by the ``strict`` one (``scoring="generate"``), and each
    choice's log-probability as the answer (``"likelihood"``: ``accuracy`` by the sum,
    ``accuracy_norm`` by the sum per UTF-8 byte of the choice); ``"auto"``: both.

    ``prompt``: a template instead of the rows' prompts (the benchmark's published one):
    ``{question}``, ``{choices}``, ``{choice_lines}``, ``{lettered}`` or a field of the item.
    A prompt longer than the model reads is an error naming the item, never cut short.
    ``export_predictions``: write the benchmark's own file with the generated answers under
    its key (``model_output``, ``answer_prediction``, ``response``), for its leaderboard."""
    from pengi_kit.data.benchmarks import item_from_row, render
    from pengi_kit.evaluation import multiple_choice as mc

    if scoring not in ("auto", "generate", "likelihood"):
        raise PengiKitError(f"unknown multiple-choice scoring {scoring!r} (use auto, generate or likelihood)")
    result = Result("multiple-choice")
    rows, bad = read_manifest(manifest, on_error="fail" if on_error == "fail" else "skip", require_text=False)
    result.problems += bad
    rows = rows[:limit] if limit is not None else rows
    parsed = []
    for ex in rows:
        try:
            parsed.append(item_from_row(dict(ex.fields)))
        except PengiKitError as exc:
            raise PengiKitError(f"{ex.source}:{ex.line}: {exc}") from None
    if not parsed:
        raise PengiKitError(f"{manifest}: no usable rows ({bad[0]})" if bad else f"{manifest}: empty")
    benches = {b.name for b, _ in parsed}
    if len(benches) > 1:
        raise PengiKitError(f"{manifest}: items of several benchmarks ({', '.join(sorted(benches))}); score each "
                            "benchmark's manifest on its own")
    bench, items = parsed[0][0], [item for _, item in parsed]
    prompts = [render(prompt, item) if prompt else ex.prompt for ex, item in zip(rows, items)]
    model = pengi.model
    if model.text_mapper is not None:
        for start in range(0, len(prompts), batch_size):
            lengths = model.prompt_lengths(prompts[start:start + batch_size])
            for i, n in enumerate(lengths, start):
                if n > model.prompt_length:
                    raise PengiKitError(
                        f"{rows[i].source}:{rows[i].line}: item {items[i].id}: the prompt has {n} tokens and the model "
                        f"reads {model.prompt_length} (model.prompt_length); give a shorter --prompt template, "
                        "e.g. '{question}'")
    clips = [Clip(str(ex.audio), ex.start, ex.end) for ex in rows]
    handle = _on_error(on_error, result)
    outputs: list[str | None] = [None] * len(items)
    if scoring in ("auto", "generate"):
        outputs = pengi.generate(clips, prompts, batch_size=batch_size, progress=None, on_error=handle, **decoding)
        official, strict = mc.official(bench, items, outputs), mc.strict_scores(items, outputs)
        result.metrics.update(official.metrics | strict.metrics)
        result.info.update(counts=official.counts, strict_unparsed=strict.counts["unparsed"],
                           breakdowns=official.groups, official_report=mc.report_lines(bench, official))
    chosen: list[tuple[int | None, int | None]] = [(None, None)] * len(items)
    if scoring in ("auto", "likelihood"):
        sums = pengi.log_likelihood(clips, prompts, [item.choices for item in items], batch_size=batch_size,
                                    on_error=handle, reduction="sum")
        scored = right = right_norm = 0
        for n, (item, s) in enumerate(zip(items, sums)):
            if torch.isnan(s).any():
                continue
            per_byte = s / torch.tensor([max(1, len(c.encode("utf-8"))) for c in item.choices])
            chosen[n] = (int(s.argmax()), int(per_byte.argmax()))
            if item.answer is not None:
                scored += 1
                right += item.choices[chosen[n][0]] == item.answer
                right_norm += item.choices[chosen[n][1]] == item.answer
        answered = sum(item.answer is not None for item in items)
        result.metrics.update({"accuracy (likelihood)": right / answered if answered else 0.0,
                               "accuracy_norm (likelihood)": right_norm / answered if answered else 0.0})
        result.info["likelihood_scored"] = scored
    sources = sorted({str(ex.fields.get("source")) for ex in rows if ex.fields.get("source")})
    result.info.update(benchmark=bench.name, benchmark_files=sources, items=len(items),
                       scorer_version=mc.SCORER_VERSION, template=prompt or bench.template, scoring=scoring,
                       rule_source=bench.source)
    for n, (item, out) in enumerate(zip(items, outputs)):
        result.predictions.append({"id": item.id, "audio": str(clips[n].path), "prompt": prompts[n], "output": out,
                                   "answer": item.answer,
                                   "likelihood": None if chosen[n][0] is None else item.choices[chosen[n][0]],
                                   "likelihood_norm": None if chosen[n][1] is None else item.choices[chosen[n][1]]})
    if export_predictions is not None:
        # an item whose clip could not be read keeps no answer: the official scripts skip it
        records = [{**item.record, **({bench.key: out} if out is not None else {})}
                   for item, out in zip(items, outputs)]
        path = Path(export_predictions)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                        if path.suffix == ".jsonl" else json.dumps(records, indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        result.info["exported"] = str(export_predictions)
    return result


# ---------------------------------------------------------------------------- listening check
def listening(pengi: Pengi, manifest: str | Path, *, on_error: str = "skip", limit: int | None = None,
              batch_size: int = 32, prompt: str | None = None, **_: Any) -> Result:
    """The listening check (docs/training.md, :meth:`pengi_kit.api.Pengi.listening`) on the
    manifest's clips: how much less likely every row's reference becomes when its clip's audio
    is swapped for a random other clip's, in nats per answer (``listening``; about 0 when the
    model ignores its audio, at least about ln K for one that tells K balanced classes apart),
    per token, and over the pairs whose answers differ; with ``loss`` and ``loss_shuffled``
    (nats per token). Any task's rows serve; needs two clips or more."""
    from pengi_kit.models.listening import LISTENING_THRESHOLD, listening_warning

    result = Result("listening")
    groups = _read(manifest, result, on_error, limit)
    if len(groups) < 2:
        raise PengiKitError(f"{manifest}: the listening check needs two clips or more")
    rows = [(i, prompt or g.prompt, text) for i, g in enumerate(groups) for text in g.texts]
    try:
        out = pengi.listening([g.clip for g in groups], rows, batch_size=batch_size,
                              on_error=_on_error(on_error, result))
    except ValueError as exc:
        raise PengiKitError(f"{manifest}: {exc} ({result.problems[-1] if result.problems else 'empty'})") from exc
    result.metrics = {k: out[k] for k in ("listening", "listening_per_token", "listening_differing", "loss",
                                          "loss_shuffled")}
    result.info.update(clips=out["clips"], answers=out["answers"], tokens=out["tokens"], threshold=LISTENING_THRESHOLD)
    warning = listening_warning(out["listening"], "loss on the references")
    if warning:
        from pengi_kit.progress import say

        result.info["warning"] = warning
        say(warning)
    return result


def evaluate(pengi: Pengi, task: str, manifest: str | Path, **options: Any) -> Result:
    """Run the registered ``task`` (``pengi-kit list-components --kind task``; the built-ins
    are the functions above) on ``manifest``; ``options`` as the task function takes."""
    return registry().get("task", task).load()(pengi, manifest, **options)
