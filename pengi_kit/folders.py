"""The folder formats pengi-kit writes and reads, and the one atomic writer.

*Encoder folder* (``pengi-kit import panns``, a tagging run's export)::

    component.json       the component, the build arguments the weights are for, where they came from
    model.safetensors    the encoder's state dict (torchlibrosa's STFT kernels dropped)

*CLAP folder* (``pengi-kit import laion-clap|ms-clap``, a contrastive run's export)::

    clap.json            flavour, the two towers' component tables, the heads' kind and width
    audio_encoder/       an encoder folder
    text_encoder/        a Hugging Face folder (config, tokenizer, weights)
    heads.safetensors    projection heads and temperature(s) (:mod:`pengi_kit.models.clap`)
    usage.toml           the [model.audio_encoder] / [model.text_encoder] tables for a recipe

Every folder and checkpoint directory is written through :func:`staged`: into a
temporary sibling, fsynced, then renamed into place, so a reader never sees half of one.
Loading is strict (:func:`load_strict`): every key of the file and of the module must
match, names and shapes.

This module sits below ``components/`` (encoders read their folders through
:func:`load_reference_weights`) and knows no component, model or importer.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from pengi_kit.errors import WeightsError

FORMAT_VERSION = 1
COMPONENT_FILE = "component.json"
COMPONENT_WEIGHTS = "model.safetensors"
CLAP_FILE = "clap.json"
HEADS_FILE = "heads.safetensors"
USAGE_FILE = "usage.toml"

#: torchlibrosa's STFT kernels: a Hann-windowed DFT basis fully determined by n_fft, which
#: ``torch.stft`` computes; checked for shape and dropped wherever a reference file holds them
STFT_KEYS = (
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
)


def short(keys: Iterable[str], n: int = 6) -> str:
    """Sorted keys, the first ``n`` of them, for one-line error messages."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# ---------------------------------------------------------------- writing

def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged(out: str | Path, force: bool = True, error: type[Exception] = WeightsError) -> Iterator[Path]:
    """A temporary sibling folder that becomes ``out`` when the block succeeds: every file in
    it is fsynced, a previous ``out`` is moved aside (never half-replaced) and removed after the
    rename, and the parent folder is fsynced. Without ``force``, a non-empty ``out`` is refused
    with ``error``. On failure ``out`` is left as it was."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise error(f"{out} already exists; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    moved = False
    try:
        yield tmp
        for path in sorted(tmp.rglob("*"), reverse=True):  # files, then the folders holding them
            _fsync(path)
        _fsync(tmp)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            moved = True
        os.replace(tmp, out)
        _fsync(out.parent)
    except BaseException:
        if moved and not out.exists():  # put the previous version back
            os.replace(old, out)
            moved = False
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def toml_table(header: str, table: Mapping[str, Any]) -> str:
    import tomli_w

    return f"[{header}]\n" + tomli_w.dumps(dict(table))


def cpu_state(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (tied tensors must not share storage in safetensors)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def save_encoder_folder(folder: Path, component: str, args: dict[str, Any], sd: Mapping[str, torch.Tensor],
                        source: dict[str, Any]) -> None:
    """An encoder folder: ``component.json`` (the component, the build arguments the weights
    are for, where they came from) and ``model.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(cpu_state(sd), str(folder / COMPONENT_WEIGHTS))
    write_json(folder / COMPONENT_FILE, {"format": FORMAT_VERSION, "kind": "audio_encoder", "component": component,
                                         "args": args, "source": source})


def write_clap_files(tmp: Path, out: Path, *, audio_table: dict[str, Any], audio_sd: Mapping[str, torch.Tensor],
                     text_table: dict[str, Any], write_text: Callable[[Path], None], heads: dict[str, Any],
                     heads_sd: Mapping[str, torch.Tensor], text_length: int, source: dict[str, Any]) -> str:
    """The files of a CLAP folder, written into ``tmp`` (staged to become ``out``); returns the
    usage tables. ``audio_table``/``text_table``: each tower's component and build arguments
    (``name`` included, ``pretrained`` left out: the subfolders replace it); ``write_text(folder)``
    saves the text tower there. :func:`pengi_kit.models.clap.write_clap_folder` adds the check
    that the folder loads."""
    from safetensors.torch import save_file

    out = out.resolve()  # the usage tables name the folders absolutely
    audio_table = dict(audio_table)
    audio_name = audio_table.pop("name")
    save_encoder_folder(tmp / "audio_encoder", audio_name, audio_table, audio_sd, source)
    write_text(tmp / "text_encoder")
    save_file(cpu_state(heads_sd), str(tmp / HEADS_FILE))
    text_table = {"name": text_table["name"], "pretrained": "text_encoder",
                  **{k: v for k, v in text_table.items() if k != "name"}}
    write_json(tmp / CLAP_FILE, {
        "format": FORMAT_VERSION, "flavour": source["format"], "variant": source.get("variant"),
        "audio_encoder": {"name": audio_name, **audio_table, "pretrained": "audio_encoder"},
        "text_encoder": text_table, "text_length": text_length, "heads": heads, "source": source,
    })
    usage = (toml_table("model.audio_encoder", {"name": audio_name, **audio_table,
                                                "pretrained": str(out / "audio_encoder")})
             + "\n" + toml_table("model.text_encoder", {**text_table, "pretrained": str(out / "text_encoder")}))
    (tmp / USAGE_FILE).write_text(usage, encoding="utf-8")
    return usage


# ---------------------------------------------------------------- reading

def read_json(path: Path, missing: str, error: type[Exception] = WeightsError) -> Any:
    """The JSON document at ``path``; ``error`` in one line when it is absent (``missing``: what
    that means and the fix) or corrupted."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path.parent}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: corrupted ({exc})") from None


def is_clap_folder(path: str | Path) -> bool:
    return (Path(path) / CLAP_FILE).is_file()


def read_clap_info(folder: str | Path) -> dict[str, Any]:
    """``clap.json`` of a CLAP folder, with each tower's ``pretrained`` made a path under it."""
    folder = Path(folder)
    info = read_json(folder / CLAP_FILE, f"not a CLAP folder (no {CLAP_FILE}); write one with "
                     "`pengi-kit import laion-clap|ms-clap` or a contrastive pretraining run")
    for slot in ("audio_encoder", "text_encoder"):
        info[slot] = {**info[slot], "pretrained": str(folder / info[slot]["pretrained"])}
    return info


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str, hint: str = "",
                error: type[Exception] = WeightsError) -> None:
    """``module.load_state_dict(sd)`` after checking names and shapes; ``error`` lists what
    is missing, unexpected or mis-shaped in one line."""
    own = module.state_dict()
    missing, unexpected = own.keys() - sd.keys(), sd.keys() - own.keys()
    wrong = sorted(k for k in own.keys() & sd.keys() if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {short(missing)}")
        if unexpected:
            parts.append(f"unexpected {short(unexpected)}")
        if wrong:
            parts.append("shape mismatch " + short(f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})"
                                                   for k in wrong))
        raise error(f"{what}: " + "; ".join(parts) + (f". {hint}" if hint else ""))
    with torch.no_grad():
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def _same(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def read_encoder_folder(path: Path, component: str | None, build_args: Mapping[str, object] | None,
                        ) -> dict[str, torch.Tensor]:
    """The state dict of an encoder folder, after checking it was written for this component
    and these build arguments (a silent front-end mismatch otherwise)."""
    from safetensors.torch import load_file

    info_file, weights = path / COMPONENT_FILE, path / COMPONENT_WEIGHTS
    if not info_file.is_file() or not weights.is_file():
        raise WeightsError(f"{path}: not an imported encoder folder (needs {COMPONENT_FILE} and {COMPONENT_WEIGHTS}); "
                           "write one with `pengi-kit import`, or pass a checkpoint file")
    info = read_json(info_file, f"no {COMPONENT_FILE}")
    if component and info.get("component") != component:
        raise WeightsError(f"{path} holds a '{info.get('component')}' encoder, not '{component}'; "
                           f"set name = \"{info.get('component')}\" in the recipe")
    for key, value in (info.get("args") or {}).items():
        if build_args is not None and key in build_args and not _same(build_args[key], value):
            raise WeightsError(f"{path} was imported for {key} = {value!r}, but this {component or 'encoder'} is "
                               f"built with {key} = {build_args[key]!r}; set {key} = {value!r} in the recipe")
    return load_file(str(weights))


def _state_dict_from(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict, nor a dict holding one under 'model' or 'state_dict'")
    return dict(obj)


def load_reference_weights(
    model: nn.Module, path: str | Path, n_fft: int, strip_prefixes: tuple[str, ...] = ("module.",),
    component: str | None = None, build_args: Mapping[str, object] | None = None,
) -> None:
    """Load a reference checkpoint (``{"model": sd}``, ``{"state_dict": sd}`` or a bare
    state dict) or an encoder folder strictly into ``model``.

    Leading ``strip_prefixes`` are removed from keys; torchlibrosa STFT kernels are
    shape-checked against ``n_fft`` and dropped. A folder must have been written for
    ``component`` and for the same values of the ``build_args`` it records. Anything
    else missing, unexpected or of the wrong shape raises :class:`WeightsError` in one
    line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        load_strict(model, read_encoder_folder(path, component, build_args), f"{path} ({type(model).__name__})")
        return
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; pass the local path of a checkpoint "
                           "or of a folder written by `pengi-kit import`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint ({first})") from None
    sd = _state_dict_from(obj, path)
    for prefix in strip_prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    want_kernel = (n_fft // 2 + 1, 1, n_fft)
    for key in STFT_KEYS:
        kernel = sd.pop(key, None)
        if kernel is not None and tuple(kernel.shape) != want_kernel:
            raise WeightsError(
                f"{path}: {key} has shape {tuple(kernel.shape)}, but this model's window is {n_fft} "
                f"(expects {want_kernel}); build the encoder with the checkpoint's window size"
            )
    load_strict(model, sd, f"{path} ({type(model).__name__})")
