"""The offline demo: pretrain a small audio tagger, train the demo recipe on synthetic
clips, then score held-out clips.

Pengi starts from a pretrained audio encoder (HTSAT trained on AudioSet tags); trained
jointly from scratch in a few minutes, the encoder's embedding collapses before the LM
learns to read it. The demo therefore first trains its CNN14 as a multi-label tagger of
the synthetic sound kinds, as PANNs trains CNN14 on AudioSet, through the general encoder
pretraining (a ``task = "tagging"`` recipe, :mod:`pengi_kit.models.tagging`); the encoder
folder it exports is what the demo recipe's ``pretrained`` names.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from pengi_kit.data.synthetic import TASKS, SyntheticCorpus


def tagger_recipe(recipe: dict[str, Any], out_dir: str | Path, steps: int = 200, batch_size: int = 32,
                  lr: float = 1e-3) -> dict[str, Any]:
    """The demo's encoder pretraining (docs/pretraining.md): ``recipe``'s audio encoder, fresh,
    trained as a multi-label tagger of the synthetic sound kinds on the recipe's training
    clips, with its run (and the exported encoder folder) in ``out_dir``."""
    from pengi_kit.recipe import from_dict

    table = {k: v for k, v in recipe["model"]["audio_encoder"].items() if k not in ("pretrained", "trainable")}
    data = recipe["data"]
    return from_dict({
        "name": f"{recipe['name']}-tagger", "seed": recipe["seed"], "task": "tagging",
        "model": {"audio_encoder": {**table, "trainable": True}},
        "pretrain": {"multi_label": True},
        "data": {"train": "synthetic", "valid": "synthetic", "synthetic_train_size": data["synthetic_train_size"],
                 "synthetic_valid_size": data["synthetic_valid_size"]},
        "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.01, "warmup_steps": 0, "schedule": "constant"},
        "train": {"batch_size": batch_size, "max_steps": steps, "log_every": 50, "eval_every": steps,
                  "save_every": steps, "output_dir": str(out_dir)},  # validated and saved once, at the end
    })


def pretrain_tagger(recipe: dict[str, Any], folder: str | Path, device: str | None = None,
                    **options: Any) -> Path:
    """Pretrain the demo recipe's audio encoder through the general path (:func:`tagger_recipe`
    with ``options``, :class:`~pengi_kit.engine.trainer.Trainer`) and leave its encoder folder
    at ``folder``; the tagging run stays beside it (``<folder's parent>/checkpoints`` ...)."""
    import os

    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.models.tagging import ENCODER_FOLDER

    folder = Path(folder)
    Trainer(tagger_recipe(recipe, folder.parent, **options), overwrite=True, device=device).fit()
    exported = folder.parent / ENCODER_FOLDER  # what the trainer exported
    if exported != folder:
        os.replace(exported, folder)
    return folder


def evaluate_synthetic(pengi: Any, corpus: SyntheticCorpus, batch_size: int = 64,
                       **decoding: Any) -> tuple[dict[str, float], dict[str, list[tuple[str, str, str]]]]:
    """Exact-match accuracy per prompt type on ``corpus``, and (prompt, target, output) samples."""
    rows = [(task, clip.audio, prompt, target)
            for clip in (corpus.clip(i) for i in range(len(corpus)))
            for task, prompt, target in clip.examples()]
    outputs = pengi.generate([(r[1], corpus.sample_rate) for r in rows], [r[2] for r in rows],
                             batch_size=batch_size, progress=None, **decoding)
    hits: dict[str, list[bool]] = defaultdict(list)
    samples: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for (task, _, prompt, target), output in zip(rows, outputs):
        hits[task].append(output == target)
        samples[task].append((prompt, target, output))
    return {t: sum(hits[t]) / len(hits[t]) for t in TASKS}, dict(samples)


def write_eval_set(folder: str | Path, held_out: SyntheticCorpus, train: SyntheticCorpus,
                   probe_train_clips: int = 120) -> Path:
    """Held-out clips as WAV files and one manifest per task of ``recipes/eval/demo.toml``:
    captions, classification, aqa (bare yes/no and count answers, as AQA corpora give them),
    multiple choice (``mmau-demo.json``, the classification and aqa questions with their
    choices in MMAU's layout, prepared as any MMAU file) and, for the linear probe,
    ``probe_train`` over the first training clips."""
    import json

    import soundfile as sf

    from pengi_kit.data.adapters import prepare
    from pengi_kit.data.manifest import write_manifest
    from pengi_kit.data.synthetic import KINDS, NUMBERS

    folder = Path(folder).resolve()  # manifests store clip paths relative to themselves
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for split, corpus, size in (("test", held_out, len(held_out)), ("train", train, min(probe_train_clips, len(train)))):
        for i in range(size):
            clip = corpus.clip(i)
            audio = folder / "clips" / f"{split}_{i:04d}.wav"
            sf.write(audio, clip.audio, corpus.sample_rate)
            if split == "train":
                rows["probe_train"].append({"audio": audio, "task": "classification", "text": clip.primary})
                continue
            rows["captions"].append({"audio": audio, "task": "caption", "text": clip.caption})
            rows["classification"].append({"audio": audio, "task": "classification", "text": clip.primary})
            for task, prompt, target in clip.examples():
                if task == "caption":
                    continue
                answer = target.split(",")[0] if task == "yes/no" else target
                if task != "classification":
                    rows["aqa"].append({"audio": audio, "prompt": prompt, "text": answer, "answer_type": task})
                choices = {"classification": list(KINDS), "yes/no": ["yes", "no"], "count": list(NUMBERS[1:])}[task]
                rows["mmau"].append({"id": f"{i:04d}-{len(rows['mmau'])}", "audio_id": f"./clips/{audio.name}",
                                     "question": prompt, "choices": choices, "answer": answer, "task": "sound",
                                     "difficulty": "easy", "category": "Perception", "sub-category": task,
                                     "dataset": "pengi-kit demo", "split": "test-mini"})
    (folder / "mmau-demo.json").write_text(json.dumps(rows.pop("mmau"), indent=1) + "\n", encoding="utf-8")
    for name, items in rows.items():
        write_manifest(folder / f"{name}.jsonl", items)
    prepare("mmau", folder, folder / "multiple_choice.jsonl")
    return folder


def report(accuracy: dict[str, float], samples: dict[str, list[tuple[str, str, str]]], shown: int = 3) -> str:
    lines = ["", "Sample generations on held-out clips:"]
    for task in TASKS:
        for prompt, target, output in samples[task][:shown]:
            mark = "ok " if output == target else "   "
            lines.append(f"  {mark}[{task}] {prompt!r} -> {output!r} (expected {target!r})")
    lines += ["", "Held-out exact-match accuracy:"]
    lines += [f"  {task:<15} {accuracy[task]:.3f}" for task in TASKS]
    return "\n".join(lines)


def run(recipe: dict[str, Any], echo: Callable[[str], None] = print, device: str | None = None) -> Path:
    """The whole demo on a resolved recipe: pretrain the tagger (unless it exists), train (an
    interruption raises :class:`~pengi_kit.engine.trainer.TrainingInterrupted` with its checkpoint,
    as :func:`pengi_kit.engine.run.fit` says), score held-out clips, and write an example clip and
    the evaluation set next to the run. Returns the final checkpoint."""
    import soundfile as sf

    import pengi_kit
    from pengi_kit.data.build import synthetic_corpus
    from pengi_kit.engine.run import fit
    from pengi_kit.engine.trainer import Trainer

    start = time.perf_counter()
    encoder = recipe["model"]["audio_encoder"]
    if encoder.get("pretrained"):
        tagger = Path(encoder["pretrained"]).resolve()  # the checkpoint refers to it from anywhere
        encoder["pretrained"] = str(tagger)
        if not tagger.exists():
            echo(f"pretraining the audio encoder as a tagger of the synthetic sounds -> {tagger}")
            pretrain_tagger(recipe, tagger, device)
    # its own run directory: start over (the trainer deletes only a run's files, not the tagger)
    path = fit(Trainer(recipe, overwrite=True, device=device))
    trained = time.perf_counter() - start
    pengi = pengi_kit.load(path, device=device or "cpu")
    held_out = synthetic_corpus(recipe, "valid", pengi.model.sample_rate, pengi.model.clip_seconds)
    accuracy, samples = evaluate_synthetic(pengi, held_out)
    echo(report(accuracy, samples))
    echo(f"\ntrained in {trained:.0f} s, total {time.perf_counter() - start:.0f} s; checkpoint: {path}")
    out = Path(path).parent.parent
    example = out / "example.wav"
    sf.write(example, held_out.clip(0).audio, held_out.sample_rate)
    train = synthetic_corpus(recipe, "train", pengi.model.sample_rate, pengi.model.clip_seconds)
    write_eval_set(out / "eval", held_out, train)
    echo(f"try: pengi-kit generate {out} {example} --prompt \"this is a sound of\"")
    echo(f"     pengi-kit evaluate {out} --suite eval/demo --data-root {out / 'eval'}")
    return path
