"""The offline demo: pretrain a small audio tagger, train the demo recipe on synthetic
clips, then score held-out clips.

Pengi starts from a pretrained audio encoder (HTSAT trained on AudioSet tags); trained
jointly from scratch in a few minutes, the encoder's embedding collapses before the LM
learns to read it. The demo therefore first trains its CNN14 as a multi-label tagger of
the synthetic sound kinds, as PANNs trains CNN14 on AudioSet, and saves it in the PANNs
checkpoint layout that the recipe then loads through ``pretrained``.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from pengi_kit.data.synthetic import KINDS, TASKS, SyntheticCorpus


def pretrain_audio_tagger(recipe: dict[str, Any], path: str | Path, steps: int = 200, batch_size: int = 32,
                          lr: float = 1e-3) -> Path:
    """Train the recipe's audio encoder to tag which sound kinds a synthetic clip holds;
    save it as ``{"model": state_dict}`` (the PANNs layout) at ``path``."""
    import torch
    import torch.nn.functional as F

    from pengi_kit.data.build import synthetic_corpus
    from pengi_kit.plugins import registry

    table = {k: v for k, v in recipe["model"]["audio_encoder"].items() if k not in ("name", "trainable")}
    table.update(pretrained=None, num_classes=len(KINDS))
    torch.manual_seed(recipe["seed"])
    encoder = registry().get("audio_encoder", recipe["model"]["audio_encoder"]["name"]).load()(**table)
    corpus = synthetic_corpus(recipe, "train", encoder.sample_rate, encoder.clip_seconds)
    clips = [corpus.clip(i) for i in range(len(corpus))]
    audio = torch.stack([torch.from_numpy(c.audio) for c in clips])
    tags = torch.tensor([[float(k in (c.primary, c.secondary)) for k in KINDS] for c in clips])
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(recipe["seed"])
    encoder.train()
    for _ in range(steps):
        idx = torch.randint(0, len(clips), (batch_size,), generator=generator)
        probs = encoder.forward_dict(audio[idx])["clipwise_output"].clamp(1e-6, 1 - 1e-6)
        loss = F.binary_cross_entropy(probs, tags[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": encoder.state_dict()}, path)
    return path


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
    captions, classification, aqa (bare yes/no and count answers, as AQA corpora give them)
    and, for the linear probe, ``probe_train`` over the first training clips."""
    import soundfile as sf

    from pengi_kit.data.manifest import write_manifest

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
                if task in ("yes/no", "count"):
                    answer = target.split(",")[0] if task == "yes/no" else target
                    rows["aqa"].append({"audio": audio, "prompt": prompt, "text": answer, "answer_type": task})
    for name, items in rows.items():
        write_manifest(folder / f"{name}.jsonl", items)
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


def run(recipe: dict[str, Any], fit: Callable[[Any], Path], echo: Callable[[str], None] = print,
        device: str | None = None) -> Path:
    """The whole demo on a resolved recipe: pretrain the tagger (unless it exists), train
    with ``fit(trainer)`` (which reports interruptions), score held-out clips, and write an
    example clip and the evaluation set next to the run. Returns the final checkpoint."""
    import soundfile as sf

    import pengi_kit
    from pengi_kit.data.build import synthetic_corpus
    from pengi_kit.engine.trainer import Trainer

    start = time.perf_counter()
    encoder = recipe["model"]["audio_encoder"]
    if encoder.get("pretrained"):
        tagger = Path(encoder["pretrained"]).resolve()  # the checkpoint refers to it from anywhere
        encoder["pretrained"] = str(tagger)
        if not tagger.exists():
            echo(f"pretraining the audio encoder as a tagger of the synthetic sounds -> {tagger}")
            pretrain_audio_tagger(recipe, tagger)
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
    echo(f"     pengi-kit evaluate {out} --suite recipes/eval/demo.toml --data-root {out / 'eval'}")
    return path
