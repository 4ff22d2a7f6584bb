"""CLAP checkpoints: LAION-CLAP (LAION-AI/CLAP) and Microsoft CLAP 2022 / 2023
(microsoft/CLAP), imported into a *CLAP folder*::

    out/
      clap.json            what was imported: flavour, the two component tables, head shapes
      audio_encoder/       an encoder folder (component.json + model.safetensors): htsat or cnn14
      text_encoder/        a Hugging Face folder (config, tokenizer, weights): roberta, bert or gpt2-text
      heads.safetensors    the projection heads and temperature(s), see below
      usage.toml           the [model.audio_encoder] / [model.text_encoder] tables for a recipe

Contrastive pretraining (``task = "contrastive"``, :mod:`pengi_kit.pretraining`) writes the same
folder (flavour ``pengi-kit``, heads in Microsoft CLAP's layout) through :func:`write_clap_folder`.

The two towers are ordinary pengi-kit components: a recipe uses them through
``pretrained = "<out>/audio_encoder"`` / ``"<out>/text_encoder"`` (usage.toml has the
exact tables). The heads map the towers' outputs into the joint audio-text space in
which CLAP compares clips and texts; :func:`load_clap` rebuilds the whole model for
zero-shot classification and retrieval (:class:`ClapModel`: ``embed_audio``,
``embed_text``, ``logits``). ``heads.safetensors`` holds:

- LAION-CLAP: ``audio_projection.{0,2}.*`` and ``text_projection.{0,2}.*`` (Linear, ReLU,
  Linear into the 512-d joint space), ``logit_scale_a`` / ``logit_scale_t`` (log
  temperatures), and ``audio_transform.sequential.{0,3}.*`` /
  ``text_transform.sequential.{0,3}.*``: the MLPs of LAION's second training loss, kept
  for completeness and fine-tuning, unused for embeddings.
- Microsoft CLAP: ``audio_projection.*`` / ``text_projection.*`` in Pengi's projection
  layout (``linear1``, ``linear2``, ``layer_norm``; 1024-d) and ``logit_scale``. These
  names are :class:`~pengi_kit.model.PengiModel`'s, so the heads also initialise a
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

import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.convert._common import (
    FORMAT_VERSION, MEL_CANDIDATES, ConversionError, KeyLedger, detect_mel, htsat_args, ignore_hf_buffers, ignore_stft,
    load_strict, read_state_dict, save_encoder_folder, source_info, staged, toml_table, write_json,
)
from pengi_kit.convert.panns import take_cnn14, write_cnn14

CLAP_FILE = "clap.json"
HEADS_FILE = "heads.safetensors"
# text tower: component name -> (transformers class, default config/tokenizer source, factory extras)
TEXT_TOWERS = {
    "roberta": ("RobertaModel", "roberta-base", {"pooling": "pooler"}),
    "bert": ("BertModel", "bert-base-uncased", {"pooling": "first"}),
    "gpt2-text": ("GPT2Model", "gpt2", {"pooling": "msclap"}),  # msclap's pooled position, '!' included
}


# ---------------------------------------------------------------- the model

class MLPHead(nn.Module):
    """LAION's ``MLPLayers(units=[d, d, d])``: Linear, ReLU, Dropout, Linear (keys 0 and 3)."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.sequential = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequential(x)


def _laion_projection(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))


class ClapModel(nn.Module):
    """An imported CLAP: two towers, their projection heads and the temperature.

    >>> clap = load_clap("laion-630k")                         # doctest: +SKIP
    >>> a = clap.embed_audio(waveforms)                         # doctest: +SKIP
    >>> t = clap.embed_text(["a dog barks", "rain"])           # doctest: +SKIP
    >>> clap.logits(a, t).softmax(-1)                          # doctest: +SKIP
    """

    def __init__(self, audio_encoder: nn.Module, text_encoder: nn.Module, heads: dict[str, Any],
                 text_length: int) -> None:
        super().__init__()
        self.audio_encoder, self.text_encoder, self.text_length = audio_encoder, text_encoder, text_length
        self.sample_rate, self.clip_seconds = audio_encoder.sample_rate, audio_encoder.clip_seconds
        kind, dim = heads["kind"], heads["dim"]
        self.projection_dim = dim  # the joint space's width
        if kind == "mlp":
            self.audio_projection = _laion_projection(audio_encoder.embed_dim, dim)
            self.text_projection = _laion_projection(text_encoder.embed_dim, dim)
        else:
            from pengi_kit.composite import Projection

            self.audio_projection = Projection(audio_encoder.embed_dim, dim)
            self.text_projection = Projection(text_encoder.embed_dim, dim)
        if heads.get("transforms"):
            self.audio_transform, self.text_transform = MLPHead(dim), MLPHead(dim)
        names = ["logit_scale_a", "logit_scale_t"] if kind == "mlp" else ["logit_scale"]
        for name in names:
            self.register_parameter(name, nn.Parameter(torch.zeros(())))

    def embed_audio(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (B, T) at ``sample_rate`` -> L2-normalised joint-space embedding (B, dim)."""
        return F.normalize(self.audio_projection(self.audio_encoder(waveform)), dim=-1)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Texts -> L2-normalised joint-space embedding (B, dim)."""
        tokens = self.text_encoder.tokenize(list(texts), self.text_length)
        device = next(self.parameters()).device
        out = self.text_encoder(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        return F.normalize(self.text_projection(out), dim=-1)

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(clips, texts) similarity logits: exp(logit scale) * cosine similarity."""
        scale = getattr(self, "logit_scale_a", None)
        scale = self.logit_scale if scale is None else scale
        return scale.exp() * audio @ text.T


def load_clap(folder: str | Path, device: str | torch.device = "cpu") -> ClapModel:
    """Rebuild the CLAP model of a folder written by ``pengi-kit import laion-clap|ms-clap``."""
    from safetensors.torch import load_file

    from pengi_kit.plugins import registry

    folder = Path(folder)
    try:
        info = json.loads((folder / CLAP_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{folder}: not a CLAP folder (no {CLAP_FILE}); write one with "
                              "`pengi-kit import laion-clap|ms-clap`") from None
    towers = {}
    for slot in ("audio_encoder", "text_encoder"):
        table = dict(info[slot])
        name = table.pop("name")
        table["pretrained"] = str(folder / table["pretrained"])
        towers[slot] = registry().get(slot, name).load()(**table)
    model = ClapModel(towers["audio_encoder"], towers["text_encoder"], info["heads"], info["text_length"])
    load_strict(model, {**{k: v for k, v in model.state_dict().items() if k.split(".")[0] in towers},
                        **load_file(str(folder / HEADS_FILE))}, f"{folder / HEADS_FILE}")
    return model.to(device).eval()


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


def write_clap_folder(tmp: Path, out: Path, *, audio_table: dict[str, Any], audio_sd: dict[str, torch.Tensor],
                      text_table: dict[str, Any], write_text: Callable[[Path], None], heads: dict[str, Any],
                      heads_sd: dict[str, torch.Tensor], text_length: int, source: dict[str, Any]) -> str:
    """Write a CLAP folder into ``tmp`` (staged to become ``out``) and check that it loads;
    returns its usage tables. ``audio_table``/``text_table``: the towers' components and
    build arguments (``name`` included, ``pretrained`` left out: the folders replace it);
    ``write_text(folder)`` saves the text tower there (importers and
    :mod:`pengi_kit.pretraining` both write CLAP folders through here)."""
    from safetensors.torch import save_file

    out = out.resolve()  # the usage tables name the folders absolutely
    audio_table = dict(audio_table)
    audio_name = audio_table.pop("name")
    if audio_name == "cnn14":
        write_cnn14(tmp / "audio_encoder", audio_table, audio_sd, source)
    else:
        save_encoder_folder(tmp / "audio_encoder", audio_name, audio_table, audio_sd, source)
    write_text(tmp / "text_encoder")
    save_file({k: v.detach().contiguous().clone() for k, v in heads_sd.items()}, str(tmp / HEADS_FILE))
    text_table = {"name": text_table["name"], "pretrained": "text_encoder",
                  **{k: v for k, v in text_table.items() if k != "name"}}
    write_json(tmp / CLAP_FILE, {
        "format": FORMAT_VERSION, "flavour": source["format"], "variant": source.get("variant"),
        "audio_encoder": {"name": audio_name, **audio_table, "pretrained": "audio_encoder"},
        "text_encoder": text_table, "text_length": text_length, "heads": heads, "source": source,
    })
    load_clap(tmp)  # every part builds and loads strictly
    usage = (toml_table("model.audio_encoder", {"name": audio_name, **audio_table,
                                                "pretrained": str(out / "audio_encoder")})
             + "\n" + toml_table("model.text_encoder", {**text_table, "pretrained": str(out / "text_encoder")}))
    (tmp / "usage.toml").write_text(usage, encoding="utf-8")
    return usage


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


__all__ = ["ClapModel", "import_laion_clap", "import_ms_clap", "load_clap"]
