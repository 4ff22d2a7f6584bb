"""pengi-kit: audio language models of the Pengi kind.

The public API is imported lazily, so ``import pengi_kit`` (and listing components)
does not import torch. The command line (:mod:`pengi_kit.cli`) calls nothing else.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from pengi_kit.hookspecs import hookimpl

__version__ = "0.1.0"

_API = {
    # inference
    "load": "pengi_kit.api",
    "Pengi": "pengi_kit.api",
    "Clap": "pengi_kit.api",
    "Clip": "pengi_kit.data.inputs",
    "DESCRIBE_PROMPTS": "pengi_kit.api",
    "serve": "pengi_kit.server",
    "Decoding": "pengi_kit.decoding",
    "collect_inputs": "pengi_kit.data.inputs",
    "checkpoint_folder": "pengi_kit.checkpoint:folder",
    # models and recipes
    "load_model": "pengi_kit.models",
    "build_model": "pengi_kit.models",
    "PengiModel": "pengi_kit.models.pengi",
    "load_recipe": "pengi_kit.recipe",
    "export": "pengi_kit.models",
    # training
    "check_training": "pengi_kit.engine.run",
    "train": "pengi_kit.engine.run",
    "launch_training": "pengi_kit.engine.run",
    "Trainer": "pengi_kit.engine.trainer",
    "TrainingInterrupted": "pengi_kit.engine.trainer",
    "TrainingAborted": "pengi_kit.engine.trainer",
    "run_demo": "pengi_kit.demo:run",
    # data
    "prepare_dataset": "pengi_kit.data.adapters:prepare",
    "check_manifest": "pengi_kit.data.check",
    "write_shards": "pengi_kit.data.shards",
    "build_tokenizer": "pengi_kit.data.tokenizer",
    # evaluation and importing
    "TaskSpec": "pengi_kit.evaluation.suite",
    "load_suite": "pengi_kit.evaluation.suite",
    "run_suite": "pengi_kit.evaluation.suite",
    "results_table": "pengi_kit.evaluation.suite:table",
    "write_report": "pengi_kit.evaluation.suite",
    "evaluation_card": "pengi_kit.evaluation.suite",
    "reproduce": "pengi_kit.evaluation.suite",
    "score_predictions": "pengi_kit.evaluation.multiple_choice",
    "import_checkpoint": "pengi_kit.convert",
    "PengiKitError": "pengi_kit.errors",
}


def list_components(kind: str | None = None) -> list[dict[str, str]]:
    """Registered components as dicts of kind, name, plugin, description and factory."""
    from pengi_kit.plugins import registry

    return [{"kind": s.kind, "name": s.name, "plugin": s.plugin, "description": s.description,
             "factory": s.target} for s in registry().specs(kind)]


def __getattr__(name: str) -> Any:
    if name in _API:  # "module" (the same name there) or "module:attr"
        module, _, attr = _API[name].partition(":")
        return getattr(import_module(module), attr or name)
    raise AttributeError(f"module 'pengi_kit' has no attribute {name!r}")


__all__ = ["hookimpl", "list_components", *_API]
