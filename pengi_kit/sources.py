"""Weight sources that are not plain hub ids: architecture-only directories and
paths relative to a checkpoint directory.

An imported checkpoint (``pengi-kit import pengi ...``) carries every weight in its
``model.safetensors``, including those of the frozen GPT-2 and CLIP text tower. Its
recipe must still say which architecture and tokenizer to build, without making the
factories download pretrained weights that would be overwritten at once. So the
importer writes the LM's and the text encoder's config and tokenizer (no weights)
into subfolders of the checkpoint, marks them with :data:`ARCHITECTURE_ONLY`, and the
recipe points ``pretrained`` at them by a path relative to the checkpoint directory:

::

    imported/
      recipe.toml            [model.lm] pretrained = "lm"
      model.safetensors      every weight, GPT-2 and CLIP included
      lm/                    config.json, tokenizer files, architecture_only.json
      text_encoder/          config.json, tokenizer files, architecture_only.json

The Hugging Face factories build a randomly initialised model from such a folder's
config (:func:`is_architecture_only`); :func:`resolve_relative` turns the relative
paths into absolute ones when a checkpoint is loaded; and the checkpoint writer
never treats an architecture-only source as something the recipe can reload, so
those weights are always saved.
"""
from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

ARCHITECTURE_ONLY = "architecture_only.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def is_architecture_only(source: str | Path | None) -> bool:
    """True for a local directory marked architecture-only: config and tokenizer, no weights."""
    if not source:
        return False
    path = Path(source)
    return path.is_dir() and (path / ARCHITECTURE_ONLY).is_file()


def mark_architecture_only(folder: str | Path, note: str) -> None:
    """Mark ``folder`` (config + tokenizer, no weights) as architecture-only.

    Refuses a folder that holds weights: they would be silently ignored.
    """
    folder = Path(folder)
    present = [name for name in WEIGHT_FILES if (folder / name).exists()]
    if present:
        raise ValueError(f"{folder} holds weights ({', '.join(present)}); an architecture-only folder must not")
    (folder / ARCHITECTURE_ONLY).write_text(json.dumps({
        "architecture_only": True,
        "note": note,
    }, indent=2) + "\n", encoding="utf-8")


def weight_sources(recipe: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str, str]]:
    """``(slot, table, key, value)`` for each non-empty ``pretrained``/``tokenizer`` string of
    the recipe's component tables: where weights and tokenizers come from."""
    for slot, table in recipe.get("model", {}).items():
        if not isinstance(table, dict):
            continue
        for key in ("pretrained", "tokenizer"):
            value = table.get(key)
            if isinstance(value, str) and value:
                yield slot, table, key, value


def resolve_relative(recipe: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """A copy of ``recipe`` whose component ``pretrained``/``tokenizer`` values that name a
    path inside ``base`` (a checkpoint directory) or the run folder holding it (``best/``,
    ``checkpoints/step-N/``: :func:`pengi_kit.checkpoint.adopt_sources` names a run's copies
    relative to the run folder) are made absolute."""
    base = Path(base).resolve()
    out = copy.deepcopy(recipe)
    for _, table, key, value in list(weight_sources(out)):
        if Path(value).is_absolute():
            continue
        for folder in (base, base.parent, base.parent.parent):
            if (folder / value).exists():
                table[key] = str(folder / value)
                break
    return out


_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json", ".npz")


def looks_local(source: str) -> bool:
    """Whether a ``pretrained``/``tokenizer`` value names a local path rather than a hub id or tag:
    it exists, or it is written as a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x.pth``)."""
    path = Path(source).expanduser()
    return (path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
            or path.suffix.lower() in _WEIGHT_SUFFIXES)


def hub_sources(recipe: dict[str, Any]) -> list[str]:
    """The ``pretrained``/``tokenizer`` values of a resolved recipe that name hub ids or tags."""
    return [value for _, _, _, value in weight_sources(recipe)
            if value != "byte" and ":" not in value and not looks_local(value)]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub (``HF_ENDPOINT``) opens within ``timeout``
    seconds (name lookup included, which sockets cannot time out by themselves)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def connect() -> None:
        import socket

        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def offline_if_hub_unreachable(recipe: dict[str, Any]) -> str | None:
    """Before a recipe's hub weights load: when the hub cannot be reached, switch the Hugging
    Face libraries to their local cache (``HF_HUB_OFFLINE``) so that a missing model fails at
    once with its name, not after a minute of retries. Returns a note to print, or None."""
    from huggingface_hub import constants

    wanted = hub_sources(recipe)
    if not wanted or constants.HF_HUB_OFFLINE or hub_reachable():
        return None
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"  # and for worker processes
    return (f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached: loading "
            f"{', '.join(dict.fromkeys(wanted))} from the local cache only")


__all__ = ["ARCHITECTURE_ONLY", "is_architecture_only", "mark_architecture_only", "resolve_relative",
           "weight_sources", "hub_sources", "hub_reachable", "offline_if_hub_unreachable"]
