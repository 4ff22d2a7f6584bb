"""Microsoft CLAPCap (microsoft/CLAP, ``clapcap_weights_2023.pth``): the CLAP 2023 audio
encoder, a transformer mapper and a GPT-2 captioner.

``ClapCaptionModel`` keeps ``clap`` (CLAP 2023's audio encoder: ``clap.base.htsat.*``
and its projection ``clap.projection.*``), ``clap_project`` (one 8-layer transformer
mapper: 1024-d projected audio -> 40 GPT-2 prefix tokens) and ``gpt`` (GPT-2). It is
Pengi without the prompt: pengi-kit represents it as a :class:`~pengi_kit.models.pengi.PengiModel`
whose text mapper is switched off (``[model.text_mapper] name = "none"``), so the
prefix is the audio prefix alone and prompts are ignored. Keys:

==========================  =====================
``clap.base.htsat.*``       ``audio_encoder.*``
``clap.projection.*``       ``audio_projection.*``
``clap_project.*``          ``audio_mapper.*``
``gpt.*``                   ``lm.model.*``
==========================  =====================

Ignored as for Pengi: the STFT kernels and GPT-2's causal-mask constants. The output
is a checkpoint directory like the Pengi importer's (architecture-only ``lm/``).

Generation: ``CLAPWrapper.generate_caption`` decodes with the same ``_generate_beam``
as Pengi's wrapper (its defaults: ``beam_size=5, entry_length=67, temperature=1.``; stop
token ``' <|endoftext|>'``) and returns ``caption.capitalize()``. The recipe's
``[generate]`` table says so (:data:`REFERENCE_GENERATE`: ``compat = "pengi"``,
``capitalize = true``), so a plain ``pengi-kit generate`` gives msclap's captions;
``--compat none`` switches to pengi-kit's own search.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pengi_kit.convert._common import (
    ConversionError, KeyLedger, ignore_stft, mapper_table, read_state_dict, save_arch_folder, source_info, staged,
)
from pengi_kit.convert.pengi import (
    DEFAULT_LM, _copy_tree, audio_front_end, build_imported, ignore_hf_buffers, renamed, under,
)

# msclap's CLAPWrapper.generate_caption defaults, its _generate_beam (Pengi's) and its str.capitalize()
REFERENCE_GENERATE = {"method": "beam", "beam_size": 5, "temperature": 1.0, "max_new_tokens": 67, "compat": "pengi",
                      "capitalize": True}
RENAMES = [("clap.base.htsat.", "audio_encoder."), ("clap.projection.", "audio_projection."),
           ("clap_project.", "audio_mapper."), ("gpt.", "lm.model.")]


def import_ms_clapcap(source: str | Path, out: str | Path, *, lm: str = DEFAULT_LM,
                      force: bool = False) -> dict[str, Any]:
    """Import ``clapcap_weights_2023.pth`` into the checkpoint directory ``out``."""
    import shutil

    from transformers import GPT2Config

    from pengi_kit.checkpoint import save_checkpoint
    from pengi_kit.recipe import from_dict

    src = str(source)
    ledger = KeyLedger(read_state_dict(source, "ms-clapcap"), src)
    if not ledger.has("clap.base.htsat."):
        raise ConversionError(f"{src}: the CLAPCap audio encoder is not HTSAT (clap.base.htsat.*)")
    ignore_stft(ledger, "clap.base.htsat.")
    ignore_hf_buffers(ledger, gpt_prefix="gpt.")
    sd = renamed(ledger, RENAMES, src)
    front = audio_front_end(under(sd, "audio_encoder."), src)
    mel_note = front.pop("mel_matrix")
    d_lm = int(sd["lm.model.transformer.wte.weight"].shape[1])
    raw = {
        "name": "ms-clapcap-2023",
        "model": {
            "projection_dim": int(sd["audio_projection.linear1.weight"].shape[0]), "normalize": True,
            "audio_encoder": {"name": "htsat", **front, "trainable": False},
            "audio_mapper": mapper_table(under(sd, "audio_mapper."), d_lm, src, "audio mapper"),
            "text_mapper": {"name": "none"},  # no prompt branch: a plain captioner
            "lm": {"name": "gpt2", "pretrained": "lm", "trainable": False},
        },
        "train": {"save_frozen": True},
        "generate": dict(REFERENCE_GENERATE),
    }
    report: dict[str, Any] = {"format": "ms-clapcap", "variant": "2023", "lm": lm, "mel_matrix": mel_note,
                              "source": source_info(source, "ms-clapcap"), "mapped": len(ledger.taken),
                              "ignored": ledger.ignored_by_reason(), "out": str(out),
                              "usage": f"try: pengi-kit generate {out} clip.wav\n"}
    with staged(out, force) as tmp:
        arch = tmp.parent / f"{tmp.name}-arch"
        arch.mkdir()
        try:
            save_arch_folder(lm, arch / "lm", GPT2Config, "GPT-2")
            recipe = from_dict(raw)
            model = build_imported(recipe, arch, sd, src, f"the checkpoint does not fit --lm '{lm}'; pass the "
                                                          f"GPT-2 it was trained with ({DEFAULT_LM})")
            report["parameters"] = sum(p.numel() for p in model.parameters())
            save_checkpoint(tmp, model, recipe, meta={"imported": report}, extra=lambda d: _copy_tree(arch, d))
        finally:
            shutil.rmtree(arch, ignore_errors=True)
    return report
