"""Importers for published reference checkpoints (docs/checkpoints.md). The built-in
formats below register through the ``register_importers`` hook, as a plugin's do.

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

import inspect
from pathlib import Path
from typing import Any

from pengi_kit.errors import ConversionError
from pengi_kit.plugins import registry


def import_checkpoint(fmt: str, source: str | Path, out: str | Path, *, force: bool = False,
                      **options: Any) -> dict[str, Any]:
    """Import the checkpoint ``source`` (a file, or a published tag such as ``"base"`` for ``pengi``:
    :mod:`pengi_kit.convert.published`) with the registered importer ``fmt`` (the formats above,
    or a plugin's: ``pengi-kit list-components --kind importer``) into ``out``.

    ``options``: the keyword arguments the importer declares (``lm`` / ``text_encoder``: hub
    id or local folder); None values are dropped. Returns a report (what was mapped, ignored,
    written).
    """
    importer = registry().get("importer", fmt).load()
    from pengi_kit.sources import looks_local

    if not Path(source).exists() and not looks_local(str(source)):  # a tag: cached, or downloaded first
        from pengi_kit.convert.published import PUBLISHED, fetch, find

        entry = find(fmt, str(source))
        if entry is None:
            tags = [p.tag for p in PUBLISHED if p.format == fmt]
            raise ConversionError(f"{source}: not a file, nor a published tag of {fmt}"
                                  f"{' (' + ', '.join(tags) + ')' if tags else ''}; pass the downloaded checkpoint "
                                  "file or a tag (docs/checkpoints.md lists them)")
        source = fetch(entry)
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - set(inspect.signature(importer).parameters))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise ConversionError(f"format '{fmt}' takes no {flags}")
    return importer(source, out, force=force, **given)


__all__ = ["ConversionError", "import_checkpoint"]
