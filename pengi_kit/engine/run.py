"""Training as calls of the public API (``pengi_kit.check_training``, ``pengi_kit.train``,
``pengi_kit.launch_training``): what ``pengi-kit train`` does, usable from Python.

>>> import pengi_kit
>>> recipe = pengi_kit.check_training("demo", ["train.max_steps=100"])  # doctest: +SKIP
>>> pengi_kit.train(recipe)                                                          # doctest: +SKIP
PosixPath('runs/demo/checkpoints/step-00000100')
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from pengi_kit.engine.distributed import teardown
from pengi_kit.engine.launch import torchrun as launch_training
from pengi_kit.engine.trainer import Trainer, TrainingAborted, TrainingInterrupted, run_dir_taken
from pengi_kit.errors import PengiKitError

__all__ = ["check_training", "fit", "launch_training", "train"]


def _launcher() -> bool:
    """This process starts the run (not a worker that torchrun started)."""
    return "LOCAL_RANK" not in os.environ


def check_training(recipe: str | Path | dict[str, Any], overrides: Sequence[str] = (), *, resume: bool = False,
                   overwrite: bool = False, device: str | None = None, nproc_per_node: int = 1) -> dict[str, Any]:
    """The resolved recipe, checked before any process starts or any weight loads: keys and
    values, the files it names, the hub (offline mode with a note when it cannot be reached),
    the device for ``nproc_per_node`` processes, and an output directory free of other runs
    (unless ``resume`` or ``overwrite``). Every problem is one :class:`PengiKitError` line."""
    from pengi_kit.devices import resolve_device
    from pengi_kit.progress import say
    from pengi_kit.recipe import check_files, from_dict, load_recipe
    from pengi_kit.sources import offline_if_hub_unreachable

    resolved = from_dict(recipe) if isinstance(recipe, dict) else load_recipe(recipe, tuple(overrides))
    check_files(resolved)
    note = offline_if_hub_unreachable(resolved)
    if _launcher():  # one line each, before any process or model starts
        if note:
            say(f"pengi-kit: {note}")
        if resume and overwrite:
            raise PengiKitError("--resume continues the run in train.output_dir and --overwrite deletes it: "
                                "give one of them")
        resolve_device(device, nproc_per_node - 1, nproc_per_node)
        problem = None if resume or overwrite else run_dir_taken(resolved["train"]["output_dir"])
        if problem:
            raise PengiKitError(problem)
    return resolved


def fit(trainer: Trainer) -> Path:
    """``trainer.fit()``, leaving the process group on every way out. On SIGINT/SIGTERM it raises
    :class:`TrainingInterrupted` (with the checkpoint) or :class:`TrainingAborted`; their
    ``main`` attribute says whether this process is the one that reports."""
    try:
        path = trainer.fit()
    except (TrainingInterrupted, TrainingAborted) as exc:
        exc.main, exc.out = trainer.dist.is_main, trainer.out
        if isinstance(exc, TrainingInterrupted):
            teardown(trainer.dist)
        raise
    teardown(trainer.dist)
    return path


def train(recipe: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
          device: str | None = None) -> Path | None:
    """Train a resolved recipe (:func:`check_training`) in this process, or as one worker of a
    run that :func:`launch_training` started; returns the final checkpoint on the process that
    writes checkpoints (rank 0), None on the others. Interruptions as :func:`fit`."""
    trainer = Trainer(recipe, resume=resume, overwrite=overwrite, device=device)
    path = fit(trainer)
    return path if trainer.dist.is_main else None
