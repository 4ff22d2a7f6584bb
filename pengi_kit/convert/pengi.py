"""Official Pengi checkpoints (microsoft/Pengi): ``base.pth`` and ``base_no_text_enc.pth``.

``torch.load(path)["model"]`` holds the reference ``PENGI`` module's state dict (keys
may carry DDP's ``module.``). Every key is mapped onto :class:`~pengi_kit.models.pengi.PengiModel`
or knowingly ignored:

============================================  ======================================
reference                                     pengi-kit
============================================  ======================================
``audio_encoder.base.htsat.*``                ``audio_encoder.*`` (HTSAT names)
``audio_encoder.projection.*``                ``audio_projection.*``
``caption_encoder.base.*`` (CLIP text model)  ``text_encoder.model.text_model.*``
``caption_encoder.clip_text_projection.*``    ``text_encoder.model.text_projection.*``
``caption_encoder.projection.*``              ``text_projection.*``
``caption_decoder.gpt.*``                     ``lm.model.*``
``caption_decoder.audio_project.*``           ``audio_mapper.*``
``caption_decoder.text_project.*``            ``text_mapper.*``
============================================  ======================================

Ignored: torchlibrosa's STFT kernels (``torch.stft`` computes the same transform),
and, where an older transformers saved them, GPT-2's causal-mask constants
(``attn.bias``, ``attn.masked_bias``) and CLIP's ``embeddings.position_ids``.

The variant follows from the keys: without ``caption_encoder.*`` it is
``base_no_text_enc``, whose prompt goes through GPT-2's own embeddings and a sequence
mapper; that mapper was trained without a padding mask, so the recipe sets
``mask_padding = false``. Its prompts were tokenised by the reference wrapper as GPT-2
tokens of ``prompt + ' <|endoftext|>'`` padded with ``'!'`` (id 0) to 40 tokens, and
since the padding reaches the mapper unmasked, the imported ``lm/`` tokenizer does
the same: its pad token is ``'!'`` and a post-processor appends the space and
end-of-text tokens to every prompt (:func:`reference_prompt_tokenizer`; targets are
tokenised without special tokens, so they are unaffected).

Generation: the recipe's ``[generate]`` table holds the reference's inference settings
(:data:`REFERENCE_GENERATE`), so that a plain ``pengi-kit generate`` answers as
``PengiWrapper.generate`` called as the Pengi README and ``example.py`` call it
(``max_len=30, beam_size=3, temperature=1.0, stop_token=' <|endoftext|>'``; the
wrapper's ``generate`` has no defaults of its own) with ``compat = "pengi"``: the
reference's beam search and stop token, its unnormalised prompt embedding, and its
text (leading space, stop token and any literal ``<|endoftext|>`` kept). ``--compat
none`` switches to pengi-kit's own search and tidied text.

The output is a checkpoint directory whose ``model.safetensors`` holds every weight.
The LM's and the text encoder's config and tokenizer come from ``lm`` and
``text_encoder`` (hub ids or local folders) and are saved, without weights, in the
architecture-only subfolders ``lm/`` and ``text_encoder/`` that the recipe points at
(:mod:`pengi_kit.sources`): loading the checkpoint downloads nothing.

Front-end: the reference feeds 7 s of 44.1 kHz audio to HTSAT, whose mel filters come
from its ``config.py`` module, not from the YAML (both ``base.yml`` and
``base_no_text_enc.yml`` say ``fmax: 8000``, which ``HTSATWrapper`` never reads). The
stored ``melW`` is loaded and wins; the recipe's ``mel_sample_rate``/``fmax`` are set
to the values whose slaney matrix equals it (checked among 32/44.1 kHz and
8/14 kHz), so the recipe also describes the matrix truthfully.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pengi_kit.convert._common import (  # MEL_CANDIDATES, ignore_hf_buffers: the CLAP importers' too
    MEL_CANDIDATES, ConversionError, KeyLedger, detect_mel, htsat_args, ignore_hf_buffers, ignore_stft, load_strict,
    mapper_table, read_state_dict, save_arch_folder, source_info, staged, tied_lm_head,
)

DEFAULT_LM = "gpt2"
DEFAULT_TEXT_ENCODER = "openai/clip-vit-base-patch16"
# PengiWrapper.generate/describe as the Pengi README and example.py call them (max_len=30,
# beam_size=3, temperature=1.0, stop_token=' <|endoftext|>'), in the reference's compat mode
REFERENCE_GENERATE = {"method": "beam", "beam_size": 3, "temperature": 1.0, "max_new_tokens": 30, "compat": "pengi"}

RENAMES = [  # reference prefix -> pengi-kit prefix
    ("audio_encoder.base.htsat.", "audio_encoder."),
    ("audio_encoder.projection.", "audio_projection."),
    ("caption_encoder.base.", "text_encoder.model.text_model."),
    ("caption_encoder.clip_text_projection.", "text_encoder.model.text_projection."),
    ("caption_encoder.projection.", "text_projection."),
    ("caption_decoder.gpt.", "lm.model."),
    ("caption_decoder.audio_project.", "audio_mapper."),
    ("caption_decoder.text_project.", "text_mapper."),
]


def renamed(ledger: Any, renames: Any, src: str) -> dict[str, torch.Tensor]:
    """Every ledger key moved to its pengi-kit name (nothing may be left), GPT-2's tied head checked."""
    sd: dict[str, torch.Tensor] = {}
    for old, new in renames:
        sd.update(ledger.take(old, new))
    ledger.finish()
    tied_lm_head(sd, "lm.model.", src)
    return sd


def under(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``sd`` below ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def audio_front_end(audio_sd: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """htsat arguments for the reference's 44.1 kHz, 7 s input and its stored mel matrix."""
    args = htsat_args(audio_sd, source)
    args.update(sample_rate=44100, clip_seconds=7.0, hop_size=320)
    match = detect_mel(audio_sd["logmel_extractor.melW"], MEL_CANDIDATES)
    mel_rate, fmin, fmax = match or (32000, 50.0, 14000.0)
    args.update(mel_sample_rate=mel_rate, fmin=fmin, fmax=fmax)
    args["mel_matrix"] = "matches slaney" if match else "unrecognised (loaded as stored)"
    return args


def reference_prompt_tokenizer(folder: Path) -> None:
    """Make the tokenizer saved in ``folder`` tokenise prompts as the Pengi wrapper does for
    ``base_no_text_enc``: ``prompt + ' <|endoftext|>'``, padded with ``'!'``."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if not getattr(tok, "is_fast", False) or tok.eos_token is None:
        raise ConversionError(f"the --lm tokenizer in {folder} is not a fast GPT-2-style tokenizer; the "
                              "no-text-encoder variant needs one to reproduce the reference's prompts")
    tok.pad_token = "!"
    suffix = tok.convert_ids_to_tokens(tok(" " + tok.eos_token, add_special_tokens=False)["input_ids"])
    template = processors.TemplateProcessing(
        single=" ".join(["$A", *suffix]), special_tokens=[(t, tok.convert_tokens_to_ids(t)) for t in dict.fromkeys(suffix)])
    backend = tok.backend_tokenizer
    backend.post_processor = (processors.Sequence([backend.post_processor, template])
                              if backend.post_processor is not None else template)
    tok.save_pretrained(folder)


def build_imported(recipe: dict[str, Any], folder: Path, sd: dict[str, torch.Tensor], what: str,
                   hint: str) -> torch.nn.Module:
    """Build the recipe's model from the architecture-only folders in ``folder`` and load
    ``sd`` (pengi-kit names) into it strictly."""
    from pengi_kit.models import build_model
    from pengi_kit.sources import resolve_relative

    model = build_model(resolve_relative(recipe, folder))
    load_strict(model, sd, what, hint)
    return model.eval()


def import_pengi(source: str | Path, out: str | Path, *, lm: str = DEFAULT_LM,
                 text_encoder: str = DEFAULT_TEXT_ENCODER, force: bool = False) -> dict[str, Any]:
    """Import ``base.pth`` / ``base_no_text_enc.pth`` into the checkpoint directory ``out``."""
    from transformers import CLIPTextConfig, GPT2Config

    from pengi_kit.checkpoint import save_checkpoint
    from pengi_kit.recipe import from_dict

    src = str(source)
    ledger = KeyLedger(read_state_dict(source, "pengi"), src)
    if not ledger.has("audio_encoder.base.htsat."):
        raise ConversionError(f"{src}: the Pengi audio encoder is not HTSAT (no audio_encoder.base.htsat.* keys); "
                              "only the published HTSAT models are supported")
    with_text = ledger.has("caption_encoder.")
    variant = "base" if with_text else "base_no_text_enc"
    ignore_stft(ledger, "audio_encoder.base.htsat.")
    ignore_hf_buffers(ledger, "caption_decoder.gpt.", "caption_encoder.base.")
    sd = renamed(ledger, RENAMES, src)

    audio_sd = under(sd, "audio_encoder.")
    front = audio_front_end(audio_sd, src)
    mel_note = front.pop("mel_matrix")
    d_lm = int(sd["lm.model.transformer.wte.weight"].shape[1])
    d_proj = int(sd["audio_projection.linear1.weight"].shape[0])
    audio_mapper = mapper_table(under(sd, "audio_mapper."), d_lm, src, "audio mapper")
    text_mapper = mapper_table(under(sd, "text_mapper."), d_lm, src, "text mapper")
    if not with_text:
        text_mapper["mask_padding"] = False  # the published mapper was trained without a padding mask
    model_cfg: dict[str, Any] = {
        "projection_dim": d_proj, "normalize": True, "prompt_length": 40, "target_length": 77,
        "audio_encoder": {"name": "htsat", **front, "trainable": True},
        "audio_mapper": audio_mapper,
        "text_mapper": text_mapper,
        "lm": {"name": "gpt2", "pretrained": "lm", "trainable": False},
    }
    if with_text:
        model_cfg["text_encoder"] = {"name": "clip-text", "pretrained": "text_encoder", "trainable": False}
    raw = {
        "name": f"pengi-{variant}",
        "model": model_cfg,
        "train": {"save_frozen": True},  # every weight lives in model.safetensors
        "generate": dict(REFERENCE_GENERATE),
    }
    report = {"format": "pengi", "variant": variant, "source": source_info(source, "pengi", variant=variant),
              "lm": lm, "text_encoder": text_encoder if with_text else None, "mel_matrix": mel_note,
              "mapped": len(ledger.taken), "ignored": ledger.ignored_by_reason(), "out": str(out),
              "usage": f"try: pengi-kit generate {out} clip.wav --prompt \"generate audio caption\"\n"}
    with staged(out, force) as tmp:
        arch = tmp.parent / f"{tmp.name}-arch"
        arch.mkdir()
        try:
            save_arch_folder(lm, arch / "lm", GPT2Config, "GPT-2")
            if not with_text:
                reference_prompt_tokenizer(arch / "lm")
            if with_text:
                save_arch_folder(text_encoder, arch / "text_encoder", CLIPTextConfig, "CLIP text")
            recipe = from_dict(raw)
            hint = "the checkpoint does not fit the architecture of --lm / --text-encoder; pass the ones it was " \
                   f"trained with ({DEFAULT_LM}, {DEFAULT_TEXT_ENCODER})"
            model = build_imported(recipe, arch, sd, f"{src} ({variant})", hint)
            report["parameters"] = sum(p.numel() for p in model.parameters())
            save_checkpoint(tmp, model, recipe, meta={"imported": report}, extra=lambda d: _copy_tree(arch, d))
        finally:
            import shutil

            shutil.rmtree(arch, ignore_errors=True)
    return report


def _copy_tree(src: Path, dst: Path) -> None:
    import shutil

    for child in src.iterdir():
        shutil.copytree(child, dst / child.name)
