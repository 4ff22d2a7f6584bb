"""pengi-kit: audio language models of the Pengi kind.

The public API is imported lazily, so ``import pengi_kit`` (and listing components)
does not import torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from pengi_kit.hookspecs import hookimpl

__version__ = "0.1.0"

_API = {
    "load": "pengi_kit.api",
    "load_model": "pengi_kit.models",
    "Pengi": "pengi_kit.api",
    "Clap": "pengi_kit.api",
    "Clip": "pengi_kit.data.inputs",
    "build_model": "pengi_kit.models",
    "PengiModel": "pengi_kit.models.pengi",
    "load_recipe": "pengi_kit.recipe",
    "Trainer": "pengi_kit.engine.trainer",
    "Decoding": "pengi_kit.decoding",
    "PengiKitError": "pengi_kit.errors",
}


def list_components(kind: str | None = None) -> list[dict[str, str]]:
    """Registered components as dicts of kind, name, plugin, description and factory."""
    from pengi_kit.plugins import registry

    return [{"kind": s.kind, "name": s.name, "plugin": s.plugin, "description": s.description,
             "factory": s.target} for s in registry().specs(kind)]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'pengi_kit' has no attribute {name!r}")


__all__ = ["hookimpl", "list_components", *_API]
