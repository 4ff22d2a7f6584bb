"""Checkpoint directories (DESIGN.md section 6).

::

    step-00001200/
      recipe.toml          the fully resolved recipe: rebuilds the architecture
      model.safetensors    weights the recipe cannot rebuild from its pretrained sources
      training_state.pt    optimiser, scheduler, step, sampler position (tensors only)
      rng-rank0.pt ...     every RNG state, one file per rank
      meta.json            versions, step, sha256 of every file
      lm/ ...              optional folders written by ``extra`` (an importer's
                           architecture-only configs and tokenizers), hashed too

Writes are atomic (temporary directory, fsync, rename). Loading verifies the hashes
and never unpickles arbitrary objects (``torch.load(weights_only=True)``).

Inference, the importers and the trainer all read and write checkpoints here; this
module imports nothing of the engine, so loading a model for inference does not load
the training code.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import shutil
import tomllib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pengi_kit.errors import CheckpointError
from pengi_kit.folders import read_json, staged
from pengi_kit.recipe import COMPONENT_SLOTS, dumps
from pengi_kit.sources import is_architecture_only

META = "meta.json"
WEIGHTS = "model.safetensors"
RECIPE = "recipe.toml"
STATE = "training_state.pt"


def referenced_slots(recipe: dict[str, Any]) -> list[str]:
    """Frozen components with a pretrained source: the recipe reloads them, so they are not copied.

    An architecture-only source (:mod:`pengi_kit.sources`) holds no weights, so a
    component built from one is always saved.
    """
    if recipe["train"].get("save_frozen"):
        return []
    model = recipe["model"]
    return [s for s in COMPONENT_SLOTS if s in model and not model[s]["trainable"] and model[s].get("pretrained")
            and not is_architecture_only(model[s]["pretrained"])]


def weights_to_save(model: torch.nn.Module, recipe: dict[str, Any],
                    state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``state`` (default: the model's state dict) without the referenced slots, except what
    trains inside them (LoRA adapters on a frozen LM: its source does not hold them)."""
    skip = tuple(f"{slot}." for slot in referenced_slots(recipe))
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    state = model.state_dict() if state is None else state
    # clone: tied weights (GPT-2's lm_head and wte) must not share storage in safetensors
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()
            if not k.startswith(skip) or k in trained}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_rest": [np_state[2], np_state[3], np_state[4]], "python": _py_state_to_list(random.getstate()),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    rest = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), rest[0], rest[1], rest[2]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_list(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def save_checkpoint(path: Path, model: torch.nn.Module, recipe: dict[str, Any],
                    training_state: dict[str, Any] | None = None, rng: dict[int, dict] | None = None,
                    meta: dict[str, Any] | None = None, extra: Callable[[Path], None] | None = None,
                    weights: dict[str, torch.Tensor] | None = None, run_dir: str | Path | None = None) -> Path:
    """Write a checkpoint directory atomically; returns its path.

    ``extra(folder)`` may add files and subfolders to the checkpoint before it is
    hashed and renamed into place. ``weights``: the model's full state dict where
    ``model.state_dict()`` would not give it (FSDP shards). ``run_dir``: the run folder the
    checkpoint is in; the recipe names the sources inside it relative to it (:func:`adopt_sources`).
    """
    from safetensors.torch import save_file

    with staged(path) as tmp:
        (tmp / RECIPE).write_text(dumps(_relative_to_run(recipe, Path(run_dir)) if run_dir else recipe),
                                  encoding="utf-8")
        save_file(weights_to_save(model, recipe, weights), str(tmp / WEIGHTS))
        if training_state is not None:
            torch.save(training_state, tmp / STATE)
        for rank, state in (rng or {}).items():
            torch.save(state, tmp / f"rng-rank{rank}.pt")
        if extra is not None:
            extra(tmp)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        info = {"format": 1, "pengi_kit": _version(), "torch": torch.__version__, "python": platform.python_version(),
                "referenced": referenced_slots(recipe), **(meta or {}),
                "sha256": {name: _sha256(tmp / name) for name in files}}
        (tmp / META).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return Path(path)


def export_merged(model: torch.nn.Module, out: Path) -> Path:
    """Write ``model`` (loaded from a checkpoint: its ``recipe`` is set) as a checkpoint for
    inference at ``out``, without training state. LoRA adapters (``[model.lm.lora]``, and an audio
    encoder's) are merged in and the lora table leaves the recipe; the merged LM is no longer its pretrained
    source, so its config and tokenizer go to ``out/lm`` (architecture-only) and every weight
    to ``model.safetensors`` (``train.save_frozen``). An existing ``out`` is replaced."""
    import copy

    from pengi_kit.sources import mark_architecture_only

    recipe = copy.deepcopy(model.recipe)
    lm, own_folder = recipe["model"]["lm"], False
    for slot, table in recipe["model"].items():
        if not isinstance(table, dict) or table.pop("lora", None) is None:
            continue
        getattr(model, slot).merge_adapters()
        recipe["train"]["save_frozen"] = True
        if slot == "lm":
            own_folder = bool(lm.get("pretrained")) and not is_architecture_only(lm["pretrained"])
            if own_folder:
                lm["pretrained"] = "lm"  # relative: resolved against the checkpoint folder when loaded
        else:  # rebuilt from its sizes; the merged weights are in model.safetensors
            table.update(pretrained="", **getattr(getattr(model, slot), "build_args", {}))

    def write_lm(folder: Path) -> None:
        model.lm.save_architecture(folder / "lm")
        mark_architecture_only(folder / "lm", "config and tokenizer of the LM, LoRA adapters merged; the weights "
                                              "are in the checkpoint's model.safetensors")

    return save_checkpoint(out, model, recipe, meta={"exported": True}, extra=write_lm if own_folder else None)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pengi-kit")
    except PackageNotFoundError:
        return "unknown"


def verify(path: Path) -> dict[str, Any]:
    """Meta of a complete, uncorrupted checkpoint, else CheckpointError naming what is wrong."""
    path = Path(path)
    meta = read_json(path / META, f"not a checkpoint directory (no {META}); pass a directory written by "
                     "`pengi-kit train` or `pengi-kit import`", CheckpointError)
    for name, digest in meta.get("sha256", {}).items():
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing; the checkpoint is incomplete")
        if _sha256(path / name) != digest:
            raise CheckpointError(f"{path}/{name}: hash mismatch, the file is truncated or corrupted")
    return meta


def read_recipe(path: Path) -> dict[str, Any]:
    return tomllib.loads((Path(path) / RECIPE).read_text(encoding="utf-8"))


def load_weights(model: torch.nn.Module, path: Path, referenced: list[str]) -> None:
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / WEIGHTS))
    result = model.load_state_dict(state, strict=False)
    skip = tuple(f"{slot}." for slot in referenced)
    missing = [k for k in result.missing_keys if not k.startswith(skip)]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not fit the recipe's model; missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")


def load_training_state(path: Path, rank: int = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    path = Path(path)
    state = torch.load(path / STATE, weights_only=True)
    rng_file = path / f"rng-rank{rank}.pt"
    return state, torch.load(rng_file, weights_only=True) if rng_file.exists() else None


def checkpoints(run_dir: Path) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("step-*")) if folder.is_dir() else []


def folder(path: str | Path) -> Path:
    """``path`` if it is a folder; a file gets a one-line error saying what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder (pass a run directory such as runs/demo, a "
                              "checkpoint folder, or a folder written by `pengi-kit import`)")
    if path.is_dir():
        return path
    if path.suffix == ".toml":
        raise CheckpointError(f"{path} is a recipe, not a checkpoint: train it first (`pengi-kit train {path}`) "
                              "and pass the run directory it prints")
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        raise CheckpointError(f"{path} is a weights file, not a checkpoint folder: import it first "
                              "(`pengi-kit import --help` lists the formats) and pass the folder it writes")
    raise CheckpointError(f"{path} is a file, not a checkpoint folder: pass the folder that holds it "
                          f"({path.parent})")


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory -> its newest intact checkpoint."""
    path = folder(path)
    if (path / META).exists() or not (path / "checkpoints").is_dir():
        verify(path)
        return path
    problems = []
    for candidate in reversed(checkpoints(path)):
        try:
            verify(candidate)
            return candidate
        except CheckpointError as exc:
            problems.append(str(exc))
    raise CheckpointError(f"{path}: no intact checkpoint" + (f" ({'; '.join(problems)})" if problems else ""))


# ---------------------------------------------------------------------- run directories
RUN_ENTRIES = ("checkpoints", "best", "metrics.jsonl", "tensorboard", "sources")
SOURCES = "sources"  # a run's copies of the local weight and tokenizer sources its recipe names


def adopt_sources(recipe: dict[str, Any], run_dir: str | Path, copy: bool = True) -> dict[str, Any]:
    """The recipe a run trains, such that its checkpoints load from any working directory and
    after the run folder moves or is copied elsewhere: every local path it names is made
    absolute (data manifests), and every local ``pretrained``/``tokenizer`` source of a
    component outside the run folder is copied once into ``<run>/sources/<slot>-<key>/`` (hard
    links where the file system allows: no second copy of the bytes). :func:`save_checkpoint`
    names the sources inside the run folder relative to it, which loading resolves from any
    checkpoint in it (:func:`pengi_kit.sources.resolve_relative`). Hub ids stay references.
    ``copy=False`` (processes other than the one that writes) only rewrites. The copy is kept
    on resume, and removed by ``--overwrite``. The recipe is rewritten in place and returned."""
    from pengi_kit.sources import weight_sources

    run_dir = Path(run_dir).resolve()
    for split in ("train", "valid"):
        value = recipe["data"].get(split)
        entries = [value] if isinstance(value, str) else [e for e in value or [] if isinstance(e, dict)]
        for entry in entries:
            name = entry if isinstance(entry, str) else entry.get("manifest", "")
            if name and Path(name).exists():
                absolute = str(Path(name).resolve())
                if isinstance(entry, str):
                    recipe["data"][split] = absolute
                else:
                    entry["manifest"] = absolute
    for slot, table, key, value in list(weight_sources(recipe)):
        path = Path(value).expanduser()
        if not path.exists() or is_architecture_only(path):
            continue
        path = path.resolve()
        if not path.is_relative_to(run_dir):
            target = run_dir / SOURCES / f"{slot}-{key}" / path.name
            if copy and not target.exists():
                _link_or_copy(path, target)
            path = target
        table[key] = str(path)
    return recipe


def _relative_to_run(recipe: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``recipe`` with the sources inside ``run_dir`` named relative to it."""
    import copy as copying

    from pengi_kit.sources import weight_sources

    run_dir = run_dir.resolve()
    out = copying.deepcopy(recipe)
    for _, table, key, value in list(weight_sources(out)):
        if Path(value).is_absolute() and Path(value).is_relative_to(run_dir):
            table[key] = Path(value).relative_to(run_dir).as_posix()
    return out


def _link_or_copy(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)

    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, staging, copy_function=link)
    else:
        link(str(source), str(staging))
    os.replace(staging, target)


def existing_run(run_dir: str | Path) -> str | None:
    """What a run left in ``run_dir`` (``"checkpoints up to step 750"`` ...), or None when it holds
    no run: no ``checkpoints/``, ``best/`` or ``metrics.jsonl``. Other files (a pretrained
    encoder the recipe loads, the demo's clips) do not count."""
    run_dir = Path(run_dir)
    steps = [int(p.name[5:]) for p in checkpoints(run_dir) if p.name[5:].isdigit()]
    if steps:
        return f"checkpoints up to step {max(steps)}"
    if (run_dir / "checkpoints").exists():
        return "an unfinished checkpoints/ folder"
    if (run_dir / "best").exists():
        return "a best/ checkpoint"
    if (run_dir / "metrics.jsonl").exists():
        step = _last_logged_step(run_dir / "metrics.jsonl")
        return "a metrics.jsonl" + (f" up to step {step}" if step is not None else "")
    return None


def _last_logged_step(path: Path) -> int | None:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = f.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def remove_run(run_dir: str | Path) -> None:
    """Delete what a training run writes in ``run_dir`` (its checkpoints, ``best/``,
    ``metrics.jsonl``, ``tensorboard/`` and temporary folders), nothing else."""
    run_dir = Path(run_dir)
    for name in RUN_ENTRIES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for tmp in [*run_dir.glob(".best.tmp-*"), *run_dir.glob(".best.old-*")]:
        shutil.rmtree(tmp, ignore_errors=True)
