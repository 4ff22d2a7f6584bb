"""PANNs Cnn14 checkpoints (Kong et al. 2020, qiuqiangkong/audioset_tagging_cnn):
``Cnn14_mAP=0.431.pth`` (32 kHz) and ``Cnn14_16k_mAP=0.438.pth`` (16 kHz).

``torch.load(path)["model"]`` holds ``Cnn14`` / ``Cnn14_16k``'s state dict, whose names
pengi-kit's :mod:`~pengi_kit.components.cnn14` keeps: every key maps to itself except
torchlibrosa's STFT kernels, knowingly ignored (``torch.stft`` computes the same
transform). The stored mel matrix ``logmel_extractor.melW`` is loaded.

The sample rate follows from the front-end's size: n_fft 1024 (``melW`` has 513 rows,
the STFT kernels 1024 taps) is the 32 kHz model, n_fft 512 the 16 kHz one. The output
is an encoder folder that a recipe uses as::

    [model.audio_encoder]
    name = "cnn14"
    sample_rate = 16000
    pretrained = "<out>"
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pengi_kit.components.cnn14 import FRONTEND_SETTINGS
from pengi_kit.convert._common import (
    ConversionError, KeyLedger, cnn14_args, detect_mel, ignore_stft, read_state_dict, source_info, staged,
)
from pengi_kit.folders import toml_table
from pengi_kit.models.base import write_encoder_folder


def take_cnn14(ledger: KeyLedger, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Cnn14 state dict under ``prefix`` (STFT kernels knowingly ignored) and its
    architecture arguments."""
    n_fft = ignore_stft(ledger, prefix)
    sd = ledger.take(prefix)
    arch = cnn14_args(sd, ledger.source)
    if arch["window_size"] != n_fft:
        raise ConversionError(f"{ledger.source}: the STFT kernels ({n_fft} taps) and melW disagree on n_fft")
    return sd, arch


def import_panns(source: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Import a PANNs Cnn14 checkpoint into the encoder folder ``out``."""
    src = str(source)
    ledger = KeyLedger(read_state_dict(source, "panns"), src)
    if "conv_block1.conv1.weight" not in ledger.sd or "logmel_extractor.melW" not in ledger.sd:
        raise ConversionError(f"{src}: a PANNs checkpoint without conv_block1.conv1.weight / "
                              "logmel_extractor.melW; only Cnn14 with its torchlibrosa front-end is supported")
    sd, arch = take_cnn14(ledger, "")
    ledger.finish()
    by_fft = {window: rate for rate, (window, _, _) in FRONTEND_SETTINGS.items()}
    n_fft = arch.pop("window_size")
    if n_fft not in by_fft:
        raise ConversionError(f"{src}: a {n_fft}-point front-end is neither Cnn14 (1024, 32 kHz) nor Cnn14_16k "
                              "(512, 16 kHz)")
    rate = by_fft[n_fft]
    mel = detect_mel(sd["logmel_extractor.melW"], [(rate, 50.0, FRONTEND_SETTINGS[rate][2])])
    args = {"sample_rate": rate, **arch}
    usage = toml_table("model.audio_encoder", {"name": "cnn14", **args, "pretrained": str(Path(out).resolve())})
    with staged(out, force) as tmp:
        write_encoder_folder(tmp, "cnn14", args, sd, source_info(source, "panns"))
        (tmp / "usage.toml").write_text(usage, encoding="utf-8")
    return {"format": "panns", "variant": f"Cnn14 {rate // 1000} kHz", "out": str(out), "args": args,
            "mel_matrix": "matches slaney" if mel else "unrecognised (loaded as stored)",
            "mapped": len(ledger.taken), "ignored": ledger.ignored_by_reason(), "usage": usage}
