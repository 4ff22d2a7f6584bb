"""Shared plumbing of the importers: safe reading, strict key accounting, detecting
architectures and front-end settings from weights, and writing the outputs."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from pengi_kit import folders
from pengi_kit.components.frontend import slaney_mel_filters
from pengi_kit.errors import ConversionError
from pengi_kit.folders import STFT_KEYS, short


# ---------------------------------------------------------------- reading

# containers under which the published files keep their state dict
CONTAINERS = ("model", "state_dict")


@dataclass(frozen=True)
class Layout:
    """How a published format is recognised: prefixes every file of it has, prefixes none has."""

    name: str
    needs: tuple[str, ...]
    lacks: tuple[str, ...] = ()


# in the order they are tried; a file is of the first layout it fits
LAYOUTS = {
    "pengi": Layout("Pengi", ("caption_decoder.gpt.", "audio_encoder.base.")),
    "ms-clapcap": Layout("CLAPCap", ("clap_project.", "gpt.")),
    "ms-clap": Layout("Microsoft CLAP", ("audio_encoder.base.", "caption_encoder.base."), ("caption_decoder.",)),
    "laion-clap": Layout("LAION-CLAP", ("audio_branch.", "text_branch.")),
    "panns": Layout("PANNs Cnn14", ("conv_block1.", "fc_audioset.")),
}


def _fits(keys: Iterable[str], layout: Layout) -> tuple[list[str], list[str]]:
    """The needed prefixes that ``keys`` lack and the excluded ones they have."""
    keys = list(keys)
    missing = [p for p in layout.needs if not any(k.startswith(p) for k in keys)]
    extra = [p for p in layout.lacks if any(k.startswith(p) for k in keys)]
    return missing, extra


def detect_format(keys: Iterable[str]) -> str | None:
    """The importer format whose characteristic keys ``keys`` (``module.`` stripped) have; None if none."""
    keys = list(keys)
    return next((fmt for fmt, layout in LAYOUTS.items() if _fits(keys, layout) == ([], [])), None)


def check_format(sd: Mapping[str, Any], fmt: str, source: str) -> None:
    """Refuse a state dict that is not of ``fmt``, naming the format it is (and its command)."""
    layout = LAYOUTS[fmt]
    missing, extra = _fits(sd, layout)
    if not missing and not extra:
        return
    why = (f"no {' / '.join(p + '*' for p in missing)} keys" if missing
           else f"it has {' / '.join(p + '*' for p in extra)} keys")
    found = detect_format(sd)
    if found is not None:
        raise ConversionError(f"{source}: this is not a {layout.name} checkpoint ({why}); it looks like a "
                              f"{LAYOUTS[found].name} checkpoint: use `pengi-kit import {found}`")
    raise ConversionError(f"{source}: this is not a {layout.name} checkpoint ({why}); its {len(sd)} "
                          f"key{'s' if len(sd) != 1 else ''} ({short(sd, 4)}) fit none of the formats "
                          f"pengi-kit imports ({', '.join(LAYOUTS)})")


def read_state_dict(path: str | Path, fmt: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict inside a reference checkpoint, with a DDP ``module.`` prefix removed;
    with ``fmt``, checked to be of that format first (:func:`check_format`).

    The state dict is the file's top-level dict of tensors or the one it keeps under
    ``"model"`` or ``"state_dict"`` (whatever the format, so that a file of another
    format is recognised and named). Loading never unpickles arbitrary objects
    (``weights_only=True``): a file that needs them is refused with the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: file not found; pass the downloaded checkpoint file")
    with torch.serialization.safe_globals(_numpy_data_globals()):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 -- mmap needs the new zipfile format; old files load without it
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user error
                raise ConversionError(f"{path}: cannot be read as a torch checkpoint with weights_only=True "
                                      f"({_load_error(exc)})") from None
    where = "the file"
    if isinstance(obj, Mapping):
        for key in CONTAINERS:
            if isinstance(obj.get(key), Mapping):
                obj, where = obj[key], f"the state dict under {key!r}"
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{path}: no state dict found: the file holds {_describe(obj)} (looked for a dict "
                              f"of tensors, or one under {' / '.join(repr(c) for c in CONTAINERS)})")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(f"{path}: no state dict found: {where} holds {_describe(sd)} and no tensors "
                              f"(looked for a dict of tensors, or one under "
                              f"{' / '.join(repr(c) for c in CONTAINERS)})")
    if fmt is not None:
        check_format(tensors, fmt, str(path))
    odd = sorted(k for k in sd if k not in tensors)
    if odd:
        raise ConversionError(f"{path}: {where} holds non-tensor entries: "
                              + ", ".join(f"{k} ({_describe(sd[k])})" for k in odd[:6])
                              + (f" (+{len(odd) - 6} more)" if len(odd) > 6 else ""))
    return sd


def _describe(obj: Any) -> str:
    """What a loaded object is, in a few words: ``a dict with keys 'epoch', 'optimizer'``."""
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        keys = [repr(k) for k in list(obj)[:6]]
        return f"a dict with keys {', '.join(keys)}" + (f" (+{len(obj) - 6} more)" if len(obj) > 6 else "")
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def _numpy_data_globals() -> list[Any]:
    """numpy scalars and dtypes, which training checkpoints keep beside the weights (LAION-CLAP
    stores metrics as numpy scalars). They rebuild plain data from bytes and run no code, so
    the weights-only unpickler may construct them; under numpy 1's module name too."""
    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
    dtypes = [getattr(np.dtypes, name) for name in dir(getattr(np, "dtypes", object)) if name.endswith("DType")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def _load_error(exc: Exception) -> str:
    """The informative part of a torch.load error, whole (weights_only names the refused global)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line] or [type(exc).__name__]
    refused = next((line for line in lines if "Unsupported global" in line), None)
    if refused:  # its first sentence names the global; the rest tells how to allow it, which pengi-kit will not
        sentence = refused[refused.index("Unsupported global"):].split(". ")[0].rstrip(".")
        return f"it would unpickle arbitrary objects, which pengi-kit refuses: {sentence}"
    operand = next((line for line in lines if line.startswith("Unsupported operand")), None)
    if operand:
        return f"it is not a torch checkpoint, or one that needs arbitrary objects unpickled: {operand}"
    return lines[0]


# ---------------------------------------------------------------- strict key accounting

@dataclass
class KeyLedger:
    """Accounts for every key of a source state dict: each is taken (mapped) or knowingly
    ignored with a reason; :meth:`finish` turns anything left over into an error."""

    sd: dict[str, torch.Tensor]
    source: str
    taken: set[str] = field(default_factory=set)
    ignored: dict[str, str] = field(default_factory=dict)

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.sd)

    def ignore(self, pattern: str, reason: str) -> list[str]:
        """Knowingly ignore the keys matching the regular expression ``pattern``."""
        rx = re.compile(pattern)
        hits = [k for k in self.sd if rx.fullmatch(k) and k not in self.taken]
        for key in hits:
            self.ignored[key] = reason
        return hits

    def take(self, prefix: str, new_prefix: str = "") -> dict[str, torch.Tensor]:
        """Keys under ``prefix`` (not ignored), renamed to ``new_prefix``."""
        out = {}
        for key, value in self.sd.items():
            if key.startswith(prefix) and key not in self.ignored:
                self.taken.add(key)
                out[new_prefix + key[len(prefix):]] = value
        return out

    def take_key(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise ConversionError(f"{self.source}: key {key!r} is missing; is this the right format?")
        self.taken.add(key)
        return self.sd[key]

    def finish(self) -> None:
        left = set(self.sd) - self.taken - set(self.ignored)
        if left:
            raise ConversionError(f"{self.source}: {len(left)} keys are neither mapped nor knowingly ignored: "
                                  f"{short(left)}; is this the right format?")

    def ignored_by_reason(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, reason in sorted(self.ignored.items()):
            out.setdefault(reason, []).append(key)
        return out


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str, hint: str = "") -> None:
    """Strict, shape-checked loading whose failure is a :class:`ConversionError`."""
    folders.load_strict(module, sd, what, hint, error=ConversionError)


def ignore_hf_buffers(ledger: KeyLedger, gpt_prefix: str | None = None, text_prefix: str | None = None) -> None:
    """Knowingly ignore the buffers older transformers saved beside GPT-2 (under ``gpt_prefix``) and
    BERT-style text models (under ``text_prefix``)."""
    if gpt_prefix is not None:
        ledger.ignore(re.escape(gpt_prefix) + r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",
                      "GPT-2 causal-mask constants that older transformers saved; recomputed by transformers")
    if text_prefix is not None:
        ledger.ignore(re.escape(text_prefix) + r"embeddings\.(position_ids|token_type_ids)",
                      "index buffers (0..n-1, zeros) that older transformers saved; recomputed by transformers")


def ignore_stft(ledger: KeyLedger, prefix: str) -> int:
    """Knowingly ignore torchlibrosa's STFT kernels under ``prefix`` after checking they
    are a DFT basis of one size; returns that n_fft."""
    sizes = set()
    for key in STFT_KEYS:
        kernel = ledger.sd.get(prefix + key)
        if kernel is None:
            raise ConversionError(f"{ledger.source}: {prefix + key} is missing; is this the right format?")
        n_fft = kernel.shape[-1]
        if tuple(kernel.shape) != (n_fft // 2 + 1, 1, n_fft):
            raise ConversionError(f"{ledger.source}: {prefix + key} has shape {tuple(kernel.shape)}, "
                                  "not torchlibrosa's (n_fft // 2 + 1, 1, n_fft)")
        sizes.add(n_fft)
    if len(sizes) != 1:
        raise ConversionError(f"{ledger.source}: the STFT kernels under {prefix!r} disagree on n_fft {sorted(sizes)}")
    ledger.ignore(re.escape(prefix) + r"spectrogram_extractor\.stft\.conv_(real|imag)\.weight",
                  "torchlibrosa STFT kernels: the Hann-windowed DFT basis, fully determined by n_fft; "
                  "pengi-kit computes the STFT with torch.stft")
    return sizes.pop()


# ---------------------------------------------------------------- front-end detection

# (mel sample rate, fmin, fmax) that the reference HTSAT front-ends (Pengi, Microsoft CLAP 2023) may have used
MEL_CANDIDATES = [(32000, 50.0, 14000.0), (32000, 50.0, 8000.0), (44100, 50.0, 14000.0), (44100, 50.0, 8000.0)]


def detect_mel(mel_w: torch.Tensor, candidates: Iterable[tuple[int, float, float]]) -> tuple[int, float, float] | None:
    """The (sample rate, fmin, fmax) among ``candidates`` whose slaney mel matrix equals the
    stored ``melW`` (n_fft // 2 + 1, n_mels); None if none does."""
    mel = mel_w.detach().float().cpu().numpy()
    n_fft, n_mels = (mel.shape[0] - 1) * 2, mel.shape[1]
    scale = max(float(np.abs(mel).max()), 1e-12)
    best, best_err = None, math.inf
    for sr, fmin, fmax in candidates:
        err = float(np.abs(slaney_mel_filters(sr, n_fft, n_mels, fmin, fmax) - mel).max()) / scale
        if err < best_err:
            best, best_err = (sr, fmin, fmax), err
    return best if best_err < 1e-3 else None


# ---------------------------------------------------------------- architectures from weights

def htsat_args(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The ``htsat`` factory arguments (architecture only) that reproduce a state dict in
    pengi-kit's HTSAT names."""
    from pengi_kit.components.htsat import HTSAT_PRESETS

    try:
        proj = sd["patch_embed.proj.weight"]
        mel_bins = int(sd["bn0.weight"].shape[0])
        n_fft = (int(sd["logmel_extractor.melW"].shape[0]) - 1) * 2
        num_classes = int(sd["tscam_conv.weight"].shape[0])
    except KeyError as exc:
        raise ConversionError(f"{source}: HTSAT key {exc} is missing; is this the right format?") from None
    if tuple(proj.shape[-2:]) != (4, 4):
        raise ConversionError(f"{source}: HTSAT patch size {tuple(proj.shape[-2:])} is not the published 4x4")
    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))})
    depths = [len({int(m.group(1)) for k in sd if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k))})
              for i in stages]
    heads = [int(sd[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]) for i in stages]
    window = int(round((math.sqrt(sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]) + 1) / 2))
    spec_size = 256  # not in the weights unless a shifted block stores its mask
    for i in stages:
        mask = sd.get(f"layers.{i}.blocks.1.attn_mask")
        if mask is not None:
            resolution = int(round(math.sqrt(mask.shape[0]))) * int(round(math.sqrt(mask.shape[1])))
            spec_size = resolution * 2**i * 4
            break
    dim = int(proj.shape[0])
    out: dict[str, Any] = {"variant": "tiny"}
    for name, preset in HTSAT_PRESETS.items():
        if preset == {"patch_embed_dim": dim, "depths": tuple(depths), "num_heads": tuple(heads)}:
            out["variant"] = name
            break
    else:
        out.update(patch_embed_dim=dim, depths=depths, num_heads=heads)
    out.update(window_size=n_fft, num_classes=num_classes)
    if mel_bins != 64:
        out["mel_bins"] = mel_bins
    if spec_size != 256:
        out["spec_size"] = spec_size
    if window != 8:
        out["attn_window_size"] = window
    return out


def cnn14_args(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """``cnn14`` factory arguments (width, classes, n_fft) of a state dict in PANNs names."""
    try:
        width = int(sd["conv_block1.conv1.weight"].shape[0])
        fc1 = sd["fc1.weight"]
        num_classes = int(sd["fc_audioset.weight"].shape[0])
        n_fft = (int(sd["logmel_extractor.melW"].shape[0]) - 1) * 2
    except KeyError as exc:
        raise ConversionError(f"{source}: Cnn14 key {exc} is missing; is this the right format?") from None
    if tuple(fc1.shape) != (32 * width, 32 * width):
        raise ConversionError(f"{source}: fc1 maps {fc1.shape[1]} -> {fc1.shape[0]}, but Cnn14 keeps the "
                              f"{32 * width}-d embedding (fc1 square); this variant is not supported")
    return {"width": width, "num_classes": num_classes, "window_size": n_fft}


def mapper_table(sd: Mapping[str, torch.Tensor], out_dim: int, source: str, what: str) -> dict[str, Any]:
    """The recipe table of a Pengi/ClipCap mapper from its weights (in pengi-kit names)."""
    if "model.0.weight" in sd:  # ClipCap's MLP: in -> k*d/2 -> k*d
        return {"name": "mlp", "prefix_length": int(sd["model.2.weight"].shape[0]) // out_dim}
    if "prefix_const" not in sd:
        raise ConversionError(f"{source}: the {what} has neither an MLP nor a transformer mapper's keys")
    k = int(sd["prefix_const"].shape[0])
    if "linear.weight" in sd and sd["linear.weight"].shape[0] != k * out_dim:
        raise ConversionError(f"{source}: the {what} maps to {sd['linear.weight'].shape[0] // out_dim} tokens but "
                              f"has {k} constants; pengi-kit's mapper needs them equal")
    layers = len({m.group(1) for key in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", key))})
    hidden = int(sd["transformer.layers.0.mlp.fc1.weight"].shape[0])
    table: dict[str, Any] = {"name": "transformer", "prefix_length": k, "num_layers": layers,
                             "num_heads": 8}  # the reference hard-codes 8 heads
    if hidden != 2 * out_dim:
        table["mlp_ratio"] = hidden / out_dim
    return table


def tied_lm_head(sd: dict[str, torch.Tensor], prefix: str, source: str) -> None:
    """GPT-2's output layer is tied to its input embeddings: fill it if a file omits it,
    and refuse a file where they differ."""
    wte, head = sd.get(prefix + "transformer.wte.weight"), sd.get(prefix + "lm_head.weight")
    if wte is None:
        return
    if head is None:
        sd[prefix + "lm_head.weight"] = wte
    elif not torch.equal(head, wte):
        raise ConversionError(f"{source}: GPT-2's lm_head.weight differs from transformer.wte.weight, but the "
                              "architecture ties them")


# ---------------------------------------------------------------- writing

@contextmanager
def staged(out: str | Path, force: bool) -> Iterator[Path]:
    """:func:`pengi_kit.folders.staged`, refusing an existing ``out`` without ``force`` as an import error."""
    with folders.staged(out, force, error=ConversionError) as tmp:
        yield tmp


def save_arch_folder(source: str, folder: Path, config_cls: Any, what: str) -> None:
    """Config and tokenizer of a Hugging Face model (no weights), marked architecture-only."""
    from pengi_kit.components._hf import hf_load, load_tokenizer
    from pengi_kit.sources import mark_architecture_only

    folder.mkdir(parents=True, exist_ok=True)
    config = hf_load(config_cls.from_pretrained, source, f"{what} config")
    config.save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    for name in ("model.safetensors", "pytorch_model.bin"):  # save_pretrained of a config writes none; be sure
        (folder / name).unlink(missing_ok=True)
    mark_architecture_only(folder, f"config and tokenizer of '{source}'; the weights are in the checkpoint's "
                                   "model.safetensors")


def source_info(path: str | Path, fmt: str, **extra: Any) -> dict[str, Any]:
    path = Path(path)
    return {"format": fmt, "file": path.name, "bytes": path.stat().st_size, **extra}
