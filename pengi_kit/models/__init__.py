"""The model layer: one module per kind of model, built from a resolved recipe or loaded from
a folder. Each model the trainer builds offers the engine's protocol
(:class:`pengi_kit.contracts.Trainable`).

============  =====================================  ===========================================
``task``      model                                  module
============  =====================================  ===========================================
pengi         :class:`~.pengi.PengiModel`            :mod:`pengi_kit.models.pengi`
  (chat)      :class:`~.chat.ChatModel`              :mod:`pengi_kit.models.chat` (``model.layout = "chat"``)
tagging       :class:`~.tagging.TaggingModel`        :mod:`pengi_kit.models.tagging`
contrastive   :class:`~.clap.ClapModel`              :mod:`pengi_kit.models.clap` (imported CLAPs too)
============  =====================================  ===========================================

:mod:`~pengi_kit.models.base` holds what they share, :mod:`~pengi_kit.models.listening` the
listening check and :mod:`~pengi_kit.models.flops` the FLOPs of a training step. Loading a
model (:func:`load_model`) imports no importer and no training code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["build_model", "export", "load_model"]


def build_model(recipe: dict[str, Any], registry: Any | None = None) -> nn.Module:
    """The model a resolved recipe (:func:`pengi_kit.recipe.load_recipe`) describes, by its ``task``:
    the Pengi model, or an encoder to pretrain (``tagging``, ``contrastive``)."""
    from pengi_kit.errors import RecipeError

    task = recipe.get("task", "pengi")
    if task == "pengi" and recipe["model"].get("layout") == "chat":
        from pengi_kit.models.chat import build_chat as build
    elif task == "pengi":
        from pengi_kit.models.pengi import build_pengi as build
    elif task == "tagging":
        from pengi_kit.models.tagging import build_tagger as build
    elif task == "contrastive":
        from pengi_kit.models.clap import build_clap as build
    else:
        raise RecipeError(f"task {task!r} is not a task (use 'pengi', 'tagging' or 'contrastive')")
    model = build(recipe, registry)
    model.recipe = recipe
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a checkpoint directory, a run directory (its newest intact checkpoint) or a
    CLAP folder, on ``device``, in eval mode."""
    from pengi_kit import checkpoint as ckpt
    from pengi_kit.devices import resolve_device
    from pengi_kit.folders import is_clap_folder
    from pengi_kit.recipe import from_dict
    from pengi_kit.sources import resolve_relative

    device = resolve_device(device)
    if is_clap_folder(path):
        from pengi_kit.models.clap import load_clap

        return load_clap(path, device)
    path = ckpt.resolve(path)
    meta = ckpt.verify(path)
    # sources inside the checkpoint (an importer's lm/, text_encoder/) are relative to it
    model = build_model(from_dict(resolve_relative(ckpt.read_recipe(path), path)))
    ckpt.load_weights(model, path, meta.get("referenced", []))
    model.origin = {"checkpoint": str(path), **{k: meta[k] for k in ("step", "best_metric", "best_value") if k in meta}}
    return model.to(device).eval()


def export(path: str | Path, out: str | Path) -> Path:
    """Write the folder users take away from a checkpoint (or run) at ``path`` to ``out`` (replaced):
    a tagging run's encoder folder, a contrastive run's CLAP folder (each with ``usage.toml``), or
    for a Pengi model a checkpoint for inference without training state, its LoRA adapters merged
    into the LM (:func:`pengi_kit.checkpoint.export_merged`). Returns the folder."""
    model = load_model(path)
    write_folder = getattr(model, "write_folder", None)
    if write_folder is not None:
        return write_folder(out)
    from pengi_kit.checkpoint import export_merged

    return export_merged(model, Path(out))
