"""CLAP checkpoints: LAION-CLAP (LAION-AI/CLAP) and Microsoft CLAP 2022 / 2023
(microsoft/CLAP), imported into a *CLAP folder*::

    out/
      clap.json            what was imported: flavour, the two component tables, head shapes
      audio_encoder/       an encoder folder (component.json + model.safetensors): htsat or cnn14
      text_encoder/        a Hugging Face folder (config, tokenizer, weights): roberta, bert or gpt2-text
      heads.safetensors    the projection heads and temperature(s), see below
      usage.toml           the [model.audio_encoder] / [model.text_encoder] tables for a recipe

Contrastive pretraining (``task = "contrastive"``) writes the same folder (flavour ``pengi-kit``,
heads in Microsoft CLAP's layout); both go through :func:`pengi_kit.models.clap.write_clap_folder`.

The two towers are ordinary pengi-kit components: a recipe uses them through
``pretrained = "<out>/audio_encoder"`` / ``"<out>/text_encoder"`` (usage.toml has the
exact tables). The heads map the towers' outputs into the joint audio-text space in
which CLAP compares clips and texts; :func:`load_clap` rebuilds the whole model for
zero-shot classification and retrieval (:class:`pengi_kit.models.clap.ClapModel`:
``embed_audio``, ``embed_text``, ``logits``). ``heads.safetensors`` holds:

- LAION-CLAP: ``audio_projection.{0,2}.*`` and ``text_projection.{0,2}.*`` (Linear, ReLU,
  Linear into the 512-d joint space), ``logit_scale_a`` / ``logit_scale_t`` (log
  temperatures), and ``audio_transform.sequential.{0,3}.*`` /
  ``text_transform.sequential.{0,3}.*``: the MLPs of LAION's second training loss, kept
  for completeness and fine-tuning, unused for embeddings.
- Microsoft CLAP: ``audio_projection.*`` / ``text_projection.*`` in Pengi's projection
  layout (``linear1``, ``linear2``, ``layer_norm``; 1024-d) and ``logit_scale``. These
  names are :class:`~pengi_kit.models.pengi.PengiModel`'s, so the heads also initialise a
  Pengi model's projections (``model.load_state_dict(heads, strict=False)``), as
  Pengi's ``use_pretrained_clap_weights`` intends.

Key maps (``module.`` stripped; everything else is an error that lists the keys):

LAION-CLAP (``{"state_dict": ...}``): ``audio_branch.*`` -> HTSAT (48 kHz, hop 480, 10 s);
``text_branch.*`` -> RoBERTa with its pooler (LAION embeds ``pooler_output``);
``audio_projection``, ``text_projection``, ``audio_transform``, ``text_transform``,
``logit_scale_a``, ``logit_scale_t`` -> heads. Ignored: the STFT kernels and
``text_branch.embeddings.position_ids`` (an index buffer newer transformers recompute).
Feature-fusion checkpoints (``*fusion*``) are refused: pengi-kit's HTSAT has no fusion
branch.

Microsoft CLAP (``{"model": ...}``): ``audio_encoder.base.*`` -> Cnn14 (2022: 44.1 kHz,
5 s) or ``audio_encoder.base.htsat.*`` -> HTSAT (2023: 44.1 kHz, 7 s);
``caption_encoder.base.*`` -> BERT (2022, [CLS] hidden state; its unused pooler is
ignored) or GPT-2 (2023, pooled as msclap pools: at the number of ids that are not its
pad token ``'!'`` minus one, the end-of-text token unless the text holds ``'!'``;
``gpt2-text`` with ``pooling = "msclap"``); ``audio_encoder.projection.*``,
``caption_encoder.projection.*``, ``logit_scale`` -> heads.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch

from pengi_kit.convert._common import (
    MEL_CANDIDATES, ConversionError, KeyLedger, detect_mel, htsat_args, ignore_hf_buffers, ignore_stft, load_strict,
    read_state_dict, source_info, staged,
)
from pengi_kit.convert.panns import take_cnn14
from pengi_kit.folders import CLAP_FILE, HEADS_FILE  # noqa: F401 - importable here as before
from pengi_kit.models.clap import ClapModel, load_clap, write_clap_folder  # noqa: F401 - importable here as before

# text tower: component name -> (transformers class, default config/tokenizer source, factory extras)
TEXT_TOWERS = {
    "roberta": ("RobertaModel", "roberta-base", {"pooling": "pooler"}),
    "bert": ("BertModel", "bert-base-uncased", {"pooling": "first"}),
    "gpt2-text": ("GPT2Model", "gpt2", {"pooling": "msclap"}),  # msclap's pooled position, '!' included
}


# ---------------------------------------------------------------- writing a CLAP folder

def write_text_tower(folder: Path, name: str, sd: dict[str, torch.Tensor], source_id: str, src: str) -> None:
    """Build the transformers model of ``name`` from ``source_id``'s config (no weight
    download), load ``sd`` strictly, save it with ``source_id``'s tokenizer."""
    import transformers

    from pengi_kit.components._hf import hf_load, load_tokenizer

    cls_name, _, _ = TEXT_TOWERS[name]
    cls = getattr(transformers, cls_name)
    config = hf_load(cls.config_class.from_pretrained, source_id, f"{cls_name} config")
    kwargs = {"add_pooling_layer": any(k.startswith("pooler.") for k in sd)} if name != "gpt2-text" else {}
    model = cls(config, **kwargs)
    load_strict(model, sd, f"{src} ({cls_name} text tower)",
                f"pass the text model it was trained with as --text-encoder (default {TEXT_TOWERS[name][1]})")
    model.save_pretrained(folder)
    load_tokenizer(source_id).save_pretrained(folder)


def imported_text_tower(name: str, sd: dict[str, torch.Tensor], source_id: str,
                        src: str) -> tuple[dict[str, Any], Callable[[Path], None]]:
    """An importer's text tower for :func:`write_clap_folder`: its table and its writer."""
    return {"name": name, **TEXT_TOWERS[name][2]}, lambda folder: write_text_tower(folder, name, sd, source_id, src)


def _htsat_front(sd: dict[str, torch.Tensor], src: str, rate: int, hop: int, seconds: float,
                 candidates: list[tuple[int, float, float]], default: tuple[int, float, float]) -> tuple[dict, str]:
    args = htsat_args(sd, src)
    match = detect_mel(sd["logmel_extractor.melW"], candidates)
    mel_rate, fmin, fmax = match or default
    args.update(sample_rate=rate, clip_seconds=seconds, hop_size=hop, fmin=fmin, fmax=fmax)
    if mel_rate != rate:
        args["mel_sample_rate"] = mel_rate
    return args, "matches slaney" if match else "unrecognised (loaded as stored)"


# ---------------------------------------------------------------- LAION-CLAP

LAION_MEL = [(48000, 50.0, 14000.0), (48000, 50.0, 8000.0), (32000, 50.0, 14000.0)]


def import_laion_clap(source: str | Path, out: str | Path, *, text_encoder: str | None = None,
                      force: bool = False) -> dict[str, Any]:
    """Import a LAION-CLAP checkpoint (HTSAT audio branch, RoBERTa text branch)."""
    src, out = str(source), Path(out)
    ledger = KeyLedger(read_state_dict(source, "laion-clap"), src)
    fused = [k for k in ledger.sd if re.search(r"fusion_model|mel_conv", k)]
    if fused:
        raise ConversionError(f"{src}: a feature-fusion checkpoint ({short_list(fused)}); pengi-kit's HTSAT has no "
                              "fusion branch: use a non-fusion checkpoint such as 630k-audioset-best.pt")
    if not ledger.has("text_branch.encoder.layer."):
        raise ConversionError(f"{src}: the text branch is not RoBERTa; only the published RoBERTa checkpoints "
                              "are supported")
    ignore_stft(ledger, "audio_branch.")
    ignore_hf_buffers(ledger, text_prefix="text_branch.")
    audio_sd = ledger.take("audio_branch.")
    text_sd = ledger.take("text_branch.")
    heads_sd = {}
    for prefix in ("audio_projection.", "text_projection.", "audio_transform.", "text_transform."):
        heads_sd.update(ledger.take(prefix, prefix))
    for name in ("logit_scale_a", "logit_scale_t"):
        heads_sd[name] = ledger.take_key(name)
    ledger.finish()
    audio_table, mel_note = _htsat_front(audio_sd, src, 48000, 480, 10.0, LAION_MEL, LAION_MEL[0])
    audio_table = {"name": "htsat", **audio_table}
    dim = int(heads_sd["audio_projection.2.weight"].shape[0])
    heads = {"kind": "mlp", "dim": dim, "transforms": "audio_transform.sequential.0.weight" in heads_sd}
    variant = f"HTSAT-{audio_table['variant']}" if "patch_embed_dim" not in audio_table else "HTSAT"
    info = source_info(source, "laion-clap", variant=variant)
    text_table, write_text = imported_text_tower("roberta", text_sd, text_encoder or TEXT_TOWERS["roberta"][1], src)
    with staged(out, force) as tmp:
        usage = write_clap_folder(tmp, out, audio_table=audio_table, audio_sd=audio_sd, text_table=text_table,
                                  write_text=write_text, heads=heads, heads_sd=heads_sd, text_length=77, source=info)
    return {"format": "laion-clap", "variant": variant, "out": str(out), "mel_matrix": mel_note,
            "mapped": len(ledger.taken), "ignored": ledger.ignored_by_reason(), "usage": usage}


def short_list(keys: list[str]) -> str:
    return ", ".join(sorted(keys)[:3]) + (" ..." if len(keys) > 3 else "")


# ---------------------------------------------------------------- Microsoft CLAP

def import_ms_clap(source: str | Path, out: str | Path, *, text_encoder: str | None = None,
                   force: bool = False) -> dict[str, Any]:
    """Import Microsoft CLAP 2022 (Cnn14 + BERT) or 2023 (HTSAT + GPT-2)."""
    src, out = str(source), Path(out)
    ledger = KeyLedger(read_state_dict(source, "ms-clap"), src)
    if ledger.has("audio_encoder.base.htsat."):
        year, audio_prefix = "2023", "audio_encoder.base.htsat."
    elif ledger.has("audio_encoder.base.conv_block1."):
        year, audio_prefix = "2022", "audio_encoder.base."
    else:
        raise ConversionError(f"{src}: the audio encoder is neither HTSAT (2023) nor Cnn14 (2022)")
    if ledger.has("caption_encoder.base.h."):
        text_name = "gpt2-text"
        ledger.ignore(r"caption_encoder\.base\.h\.\d+\.attn\.(bias|masked_bias)",
                      "GPT-2 causal-mask constants that older transformers saved; recomputed by transformers")
    elif ledger.has("caption_encoder.base.encoder.layer."):
        text_name = "bert"
        ignore_hf_buffers(ledger, text_prefix="caption_encoder.base.")
        ledger.ignore(r"caption_encoder\.base\.pooler\..*",
                      "BERT's pooler: the reference embeds the [CLS] hidden state, so the pooler is unused")
    else:
        raise ConversionError(f"{src}: the text encoder is neither GPT-2 (2023) nor BERT (2022)")
    if year == "2022":
        audio_sd, arch = take_cnn14(ledger, audio_prefix)
        n_fft = arch.pop("window_size")
        match = detect_mel(audio_sd["logmel_extractor.melW"], [(44100, 50.0, 14000.0), (44100, 50.0, 8000.0),
                                                               (32000, 50.0, 14000.0)])
        rate, _, fmax = match or (44100, 50.0, 14000.0)
        audio_table = {"name": "cnn14", "sample_rate": 44100, **arch, "window_size": n_fft, "hop_size": 320,
                       "fmax": fmax, "clip_seconds": 5.0}
        if rate != 44100:
            raise ConversionError(f"{src}: the Cnn14 mel matrix was built for {rate} Hz, not the reference's "
                                  "44.1 kHz input; pengi-kit's Cnn14 computes its filters at its input rate")
        mel_note = "matches slaney" if match else "unrecognised (loaded as stored)"
    else:
        ignore_stft(ledger, audio_prefix)
        audio_sd = ledger.take(audio_prefix)
        audio_table, mel_note = _htsat_front(audio_sd, src, 44100, 320, 7.0, MEL_CANDIDATES, (32000, 50.0, 14000.0))
        audio_table = {"name": "htsat", **audio_table}
    text_sd = ledger.take("caption_encoder.base.")
    heads_sd = {**ledger.take("audio_encoder.projection.", "audio_projection."),
                **ledger.take("caption_encoder.projection.", "text_projection."),
                "logit_scale": ledger.take_key("logit_scale")}
    ledger.finish()
    heads = {"kind": "projection", "dim": int(heads_sd["audio_projection.linear1.weight"].shape[0])}
    text_table, write_text = imported_text_tower(text_name, text_sd, text_encoder or TEXT_TOWERS[text_name][1], src)
    info = source_info(source, "ms-clap", variant=year)
    with staged(out, force) as tmp:
        usage = write_clap_folder(tmp, out, audio_table=audio_table, audio_sd=audio_sd, text_table=text_table,
                                  write_text=write_text, heads=heads, heads_sd=heads_sd,
                                  text_length=100 if year == "2022" else 77, source=info)
    return {"format": "ms-clap", "variant": year, "out": str(out), "mel_matrix": mel_note,
            "mapped": len(ledger.taken), "ignored": ledger.ignored_by_reason(), "usage": usage}


__all__ = ["import_laion_clap", "import_ms_clap"]
