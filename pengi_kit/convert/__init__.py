"""Importers for published reference checkpoints (docs/checkpoints.md).

===============  ===========================================  =================================
format           source files                                 output
===============  ===========================================  =================================
``pengi``        ``base.pth``, ``base_no_text_enc.pth``       a checkpoint directory
``ms-clapcap``   ``clapcap_weights_2023.pth``                 a checkpoint directory
``panns``        ``Cnn14_mAP=0.431.pth``, ``Cnn14_16k_...``   an encoder folder (``cnn14``)
``laion-clap``   ``630k-*.pt``, ``music_*.pt``                a CLAP folder (``htsat`` + ``roberta``)
``ms-clap``      ``CLAP_weights_2022.pth`` / ``_2023.pth``    a CLAP folder (``cnn14``/``htsat`` +
                                                              ``bert``/``gpt2-text``)
===============  ===========================================  =================================

Loading is strict everywhere: each source key is mapped or knowingly ignored with a
reason, and anything left over or missing is an error that lists the keys. Files are
read with ``torch.load(weights_only=True)`` (numpy scalars and dtypes allowed, as data):
no arbitrary object is unpickled.

>>> from pengi_kit.convert import import_checkpoint          # doctest: +SKIP
>>> import_checkpoint("pengi", "base.pth", "pengi-base")      # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pengi_kit.convert._common import ConversionError

# format -> (module:function, options it takes, one-line description)
FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "pengi": ("pengi_kit.convert.pengi:import_pengi", ("lm", "text_encoder"),
              "Pengi base.pth / base_no_text_enc.pth -> checkpoint directory"),
    "panns": ("pengi_kit.convert.panns:import_panns", (),
              "PANNs Cnn14 (32 kHz or 16 kHz) -> cnn14 encoder folder"),
    "laion-clap": ("pengi_kit.convert.clap:import_laion_clap", ("text_encoder",),
                   "LAION-CLAP (HTSAT + RoBERTa) -> CLAP folder"),
    "ms-clap": ("pengi_kit.convert.clap:import_ms_clap", ("text_encoder",),
                "Microsoft CLAP 2022 (CNN14 + BERT) / 2023 (HTSAT + GPT-2) -> CLAP folder"),
    "ms-clapcap": ("pengi_kit.convert.clapcap:import_ms_clapcap", ("lm",),
                   "Microsoft CLAPCap 2023 (HTSAT + mapper + GPT-2 captioner) -> checkpoint directory"),
}


def _load(target: str) -> Callable[..., dict[str, Any]]:
    from importlib import import_module

    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def import_checkpoint(fmt: str, source: str | Path, out: str | Path, *, force: bool = False,
                      **options: Any) -> dict[str, Any]:
    """Import the reference checkpoint ``source`` of format ``fmt`` into ``out``.

    ``options``: ``lm`` / ``text_encoder`` (hub id or local folder) for the formats that
    take them; None values are dropped. Returns a report (what was mapped, ignored, written).
    """
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    target, accepted, _ = FORMATS[fmt]
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - set(accepted))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise ConversionError(f"format '{fmt}' takes no {flags}")
    return _load(target)(source, out, force=force, **given)


__all__ = ["FORMATS", "ConversionError", "import_checkpoint"]
