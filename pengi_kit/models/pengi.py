"""The Pengi model: audio and a prompt become a prefix for a causal LM (DESIGN.md section 1),
built from a resolved recipe."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.models.base import Composite, Projection, build_component, string_keys
from pengi_kit.models.listening import listening_sums, listening_warning, partners
from pengi_kit.recipe import COMPONENT_SLOTS, slot_enabled

__all__ = ["PengiModel", "build_components", "build_pengi", "Prefix", "take_rows", "split_prefix", "prefix_rows", "stack_rows"]

#: a prefix: (B, P, D) embeddings, or (B, P, D) with a (B, P) mask where rows differ in length (audio
#: tokens that follow the clip's length: the right-padded audio half, or the left-padded LM prefix)
Prefix = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def take_rows(prefix: Prefix, index: torch.Tensor) -> Prefix:
    """Some rows of a prefix (with their mask)."""
    return (prefix[0][index], prefix[1][index]) if isinstance(prefix, tuple) else prefix[index]


def split_prefix(prefix: Prefix) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeddings, mask or None)."""
    return prefix if isinstance(prefix, tuple) else (prefix, None)


def prefix_rows(prefix: Prefix) -> list[torch.Tensor]:
    """Each row's own vectors (P_i, D), padding dropped."""
    embeds, mask = split_prefix(prefix)
    return list(embeds) if mask is None else [row[m.bool()] for row, m in zip(embeds, mask)]


def stack_rows(rows: list[torch.Tensor]) -> Prefix:
    """Rows (P_i, D) back into a prefix: a tensor when they are of one length, else right-padded
    with a mask (the audio half's layout)."""
    if all(len(r) == len(rows[0]) for r in rows):
        return torch.stack(rows)
    width = max(len(r) for r in rows)
    embeds = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        embeds[i, :len(r)], mask[i, :len(r)] = r, 1
    return embeds, mask


class PengiModel(Composite):
    """Audio + prompt -> prefix (B, 2k, D_lm) -> causal LM.

    Without a text encoder, the prompt is embedded by the LM's own token embeddings and
    reaches the LM through a sequence mapper (Pengi's ``base_no_text_enc``). Without a
    text mapper too, there is no prompt branch: the prefix is the audio prefix alone
    (a plain captioner such as Microsoft's CLAPCap) and prompts are ignored.
    """

    layout = "prefix"  # how audio and text reach the LM (models/chat.py: "chat")
    text_targets = True  # the loss is over answers the LM pads: batches may be bucketed by their length

    def __init__(self, audio_encoder: nn.Module, audio_mapper: nn.Module, text_mapper: nn.Module | None,
                 lm: nn.Module, text_encoder: nn.Module | None = None, projection_dim: int = 1024,
                 normalize: bool = True, prompt_length: int = 40, target_length: int = 77,
                 projection_dropout: float = 0.5) -> None:
        super().__init__(audio_encoder)
        self.text_encoder, self.lm = text_encoder, lm
        # a frame encoder's frames are projected one by one, without dropout (dropping half of each
        # frame's features, as Pengi's 0.5 does to its one embedding, keeps the mapper from learning)
        self.audio_projection = Projection(audio_encoder.embed_dim, projection_dim,
                                           0.0 if self.frames else projection_dropout)
        self.text_projection = (Projection(text_encoder.embed_dim, projection_dim, projection_dropout)
                                if text_encoder else None)
        self.audio_mapper, self.text_mapper = audio_mapper, text_mapper
        self.normalize, self.prompt_length, self.target_length = normalize, prompt_length, target_length
        if text_mapper is None and text_encoder is not None:
            raise ValueError("a text encoder needs a text mapper")
        # the LM's input before the targets: the mapped prefix, and a chat template's tokens around it
        self.prefix_length = (audio_mapper.prefix_length + (text_mapper.prefix_length if text_mapper else 0)
                              + sum(len(ids) for ids in getattr(lm, "chat_ids", ())))
        config = getattr(getattr(lm, "model", None), "config", None)
        #: the longest sequence the LM takes (learned positions: GPT-2's n_positions; else unbounded)
        self.max_positions = (int(config.get_text_config().max_position_embeddings)
                              if config is not None and config.model_type in ("gpt2", "opt", "gpt_neo") else 10**9)

    # -------------------------------------------------------------- inputs
    def tokenize_prompts(self, prompts: list[str], length: int | None = None) -> dict[str, torch.Tensor]:
        """Prompts padded, or cut, to ``prompt_length`` tokens (or ``length``)."""
        length = length or self.prompt_length
        if self.text_encoder is not None:
            return self.text_encoder.tokenize(prompts, length)
        tok = self.lm.tokenizer
        return dict(tok(list(prompts), padding="max_length", truncation=True, max_length=length,
                        return_tensors="pt"))

    def prompt_lengths(self, prompts: list[str], limit: int = 1024) -> list[int]:
        """Each prompt's length in tokens, uncut (up to ``limit``): more than ``prompt_length``
        means the model would read it cut short."""
        return self.tokenize_prompts(prompts, limit)["attention_mask"].sum(1).tolist()

    def tokenize_targets(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Target ids end with end-of-text; padding is masked out of the loss."""
        tok, eos = self.lm.tokenizer, self.lm.eos_token_id
        rows = [tok(t, add_special_tokens=False)["input_ids"][: self.target_length - 1] + [eos] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # -------------------------------------------------------------- embeddings
    def _maybe_normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def embed_audio(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Projected audio embedding (B, d_proj), normalised if the recipe says so (a frame
        encoder's frames are averaged over each clip's mask first)."""
        return self._maybe_normalize(self.audio_projection(self.encode_clips(audio, lengths)))

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   normalize: bool | None = None) -> torch.Tensor:
        """Projected text embedding (B, d_proj), normalised if the recipe says so (or ``normalize``)."""
        if self.text_encoder is None:
            raise ValueError("this model has no text encoder (its prompts go through the LM's embeddings)")
        embedding = self.text_projection(self.text_encoder(input_ids, attention_mask))
        normalize = self.normalize if normalize is None else normalize
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def audio_prefix(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) audio -> the audio half of the prefix (B, k, D_lm). A frame encoder's frames are
        projected one by one and read by a sequence mapper (``qformer``) with their mask;
        ``lengths``: each clip's samples in the zero-padded batch (None: all T)."""
        if self.frames:
            frames, mask = self.run_audio_encoder(audio, lengths)
            return self.audio_mapper(self.audio_projection(frames), mask)
        return self.audio_mapper(self.embed_audio(audio))

    def text_prefix(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    compat: str = "none") -> torch.Tensor | None:
        """Tokenised prompts -> the prompt half of the prefix (B, k, D_lm); None without a prompt branch.

        ``compat="pengi"``: the reference wrapper's inference, which does not L2-normalise
        the prompt embedding (training does, as the default here)."""
        if self.text_mapper is None:
            return None
        if self.text_encoder is None:
            return self.text_mapper(self.lm.embed(prompt_ids), prompt_mask)
        normalize = False if compat == "pengi" else None
        return self.text_mapper(self.embed_text(prompt_ids, prompt_mask, normalize=normalize))

    def prompt_prefix(self, prompts: list[str], compat: str = "none") -> torch.Tensor | None:
        """Prompt texts -> the prompt half of the prefix (B, k, D_lm) on the model's device
        (:meth:`text_prefix`); None without a prompt branch. Inference caches its rows per prompt."""
        if self.text_mapper is None:
            return None
        tokens = self.tokenize_prompts(prompts)
        device = next(self.parameters()).device
        return self.text_prefix(tokens["input_ids"].to(device), tokens["attention_mask"].to(device), compat)

    def join_prefix(self, audio_prefix: Prefix, text_prefix: torch.Tensor | None) -> Prefix:
        """The LM prefix: audio half then prompt half (B, 2k, D_lm). A single prompt half
        (1, k, D_lm) serves every row; without a prompt branch the audio half is the prefix.
        With a chat template (``lm.chat_ids``), the template's tokens of a user turn and of the
        assistant's turn go before and after it (B, head + 2k + tail, D_lm). Audio halves of
        different lengths (a ``downsample`` mapper) give rows padded on the left and their mask."""
        audio, audio_mask = split_prefix(audio_prefix)
        parts = [audio] if text_prefix is None else [audio, text_prefix.expand(len(audio), -1, -1)]
        head, tail = getattr(self.lm, "chat_ids", ([], []))
        if head or tail:
            ids = torch.tensor(head + tail, dtype=torch.long, device=audio.device)
            chat = self.lm.embed(ids).to(audio.dtype).expand(len(audio), -1, -1)
            parts = [chat[:, :len(head)], *parts, chat[:, len(head):]]
        if audio_mask is not None:  # each row: its own audio tokens, then the rest; padded on the left
            from pengi_kit.generation import pad_prefixes

            rest = [p for p in parts if p is not audio]
            at = next(i for i, p in enumerate(parts) if p is audio)
            rows = [torch.cat([p[i] for p in rest[:at]] + [audio[i, m.bool()]] + [p[i] for p in rest[at:]])
                    for i, m in enumerate(audio_mask)]
            embeds, mask = pad_prefixes(rows)
            return embeds if mask is None else (embeds, mask)
        return torch.cat(parts, dim=1) if len(parts) > 1 else audio

    def prefix(self, audio: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
               compat: str = "none", lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) audio and tokenised prompts -> the LM prefix (B, 2k, D_lm).

        ``compat="pengi"`` computes it as the reference wrapper does at inference (see
        :meth:`text_prefix`); training always uses the default."""
        return self.join_prefix(self.audio_prefix(audio, lengths), self.text_prefix(prompt_ids, prompt_mask, compat))

    # -------------------------------------------------------------- scoring and training
    def target_logprobs(self, prefix: Prefix, target_ids: torch.Tensor,
                        target_mask: torch.Tensor) -> torch.Tensor:
        """Log-probability (float32) of each target token given the prefix and the targets
        before it (B, L); 0 where ``target_mask`` is 0. Training's loss and
        :meth:`pengi_kit.api.Pengi.log_likelihood` are both sums of it."""
        prefix, prefix_mask = split_prefix(prefix)
        embeds = torch.cat([prefix, self.lm.embed(target_ids).to(prefix.dtype)], dim=1)
        before = target_mask.new_ones(prefix.shape[:2]) if prefix_mask is None else prefix_mask.to(target_mask.dtype)
        logits, _ = self.lm(embeds, torch.cat([before, target_mask], dim=1))
        k = prefix.shape[1]
        logits = logits[:, k - 1: -1].float()  # position t predicts target token t
        labels = target_ids.masked_fill(target_mask == 0, -100)  # cross_entropy's ignore_index: 0 there
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        return -nll.view_as(labels)

    def forward(self, audio: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                target_ids: torch.Tensor, target_mask: torch.Tensor, clip_key: torch.Tensor | None = None,
                audio_lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Summed cross-entropy over target tokens and their count (the trainer normalises);
        ``clip_key`` serves the listening check only; ``audio_lengths`` a frame encoder."""
        logp = self.target_logprobs(self.prefix(audio, prompt_ids, prompt_mask, lengths=audio_lengths), target_ids,
                                    target_mask)
        return {"loss_sum": -logp.sum(), "tokens": target_mask.sum()}

    # -------------------------------------------------------------- the engine's protocol
    def batch_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A collated batch (:mod:`pengi_kit.data.collate`) -> forward's inputs (CPU tensors,
        batch-first); ``clip_key`` names each row's clip for the listening check."""
        prompts, targets = self.tokenize_prompts(batch["prompts"]), self.tokenize_targets(batch["texts"])
        inputs = {"audio": batch["audio"], "prompt_ids": prompts["input_ids"],
                  "prompt_mask": prompts["attention_mask"], "target_ids": targets["input_ids"],
                  "target_mask": targets["attention_mask"],
                  "clip_key": string_keys(batch.get("clips") or [f"row:{i}" for i in range(len(batch["texts"]))])}
        if self.frames and "audio_lengths" in batch:  # a frame encoder keeps each clip's own frames
            inputs["audio_lengths"] = batch["audio_lengths"]
        return inputs

    @staticmethod
    def loss_units(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The terms ``loss_sum`` sums over: target tokens."""
        return inputs["target_mask"].sum()

    def lm_tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Positions the LM computes, padding aside: each row's prefix and target tokens."""
        return inputs["target_mask"].sum() + self.prefix_length * len(inputs["target_mask"])

    def flops(self, inputs: dict[str, torch.Tensor]) -> float:
        """FLOPs of a training step over ``inputs``: the batch size times one example's count at the
        batch's padded target length L, a parabola in L fitted exactly through three measured
        lengths (:mod:`pengi_kit.models.flops`), measured once."""
        from pengi_kit.models.flops import fit_quadratic, step_flops

        if "target_length" not in self._flops:
            self._flops["target_length"] = fit_quadratic({n: step_flops(self, self.example_inputs(1, n))
                                                          for n in (4, 8, 16)})
        c0, c1, c2 = self._flops["target_length"]
        length = inputs["target_ids"].shape[1]
        return len(inputs["target_ids"]) * (c0 + c1 * length + c2 * length * length)

    def example_inputs(self, n: int = 1, target_length: int = 4) -> dict[str, torch.Tensor]:
        """Forward inputs of ``n`` made-up examples on the model's device: silent clips (10 s where the
        encoder takes any length), a one-word prompt, ``target_length`` target tokens."""
        dev = next(self.parameters()).device
        prompts = self.tokenize_prompts(["a"] * n)
        ids = torch.zeros(n, target_length, dtype=torch.long, device=dev)
        return {"audio": self.silent_clips(n), "prompt_ids": prompts["input_ids"].to(dev),
                "prompt_mask": prompts["attention_mask"].to(dev), "target_ids": ids, "target_mask": torch.ones_like(ids)}

    def reference_nll(self, audio_prefix: Prefix, text_prefix: torch.Tensor | None, target_ids: torch.Tensor,
                      target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's negative log-likelihood of its target, summed over its tokens (B,), and its
        token count (B,), given its audio prefix and prompt prefix."""
        logp = self.target_logprobs(self.join_prefix(audio_prefix, text_prefix), target_ids, target_mask)
        return -logp.sum(1), target_mask.sum(1)

    @torch.no_grad()
    def validation_sums(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{metric: float64 [sum, count]}`` over one batch: the validation loss and the listening
        check (:mod:`pengi_kit.models.listening`: each row's answer scored with the audio prefix of
        a row of another clip, :func:`~pengi_kit.models.listening.partners` of ``clip_key``, as
        well as its own; the audio prefixes are computed once). The trainer visits validation
        rows in a seeded random order, so a row's partner is a random row of another clip."""
        audio = self.audio_prefix(inputs["audio"], inputs.get("audio_lengths"))
        text = self.text_prefix(inputs["prompt_ids"], inputs["prompt_mask"])
        ids, mask = inputs["target_ids"], inputs["target_mask"]
        nll, tokens = self.reference_nll(audio, text, ids, mask)
        sums = {"valid_loss": torch.stack([nll.double().sum(), tokens.double().sum()])}
        keys = inputs.get("clip_key", torch.arange(len(ids)))
        index = torch.tensor(partners(keys.tolist()), device=ids.device)
        keep = index >= 0
        if not bool(keep.any()):
            return sums
        other = index.clamp(min=0)
        swapped, _ = self.reference_nll(take_rows(audio, other), text, ids, mask)
        differ = ((ids * mask) != (ids * mask)[other]).any(1)  # padding aside: the answers' tokens
        return {**sums, **listening_sums(nll, swapped, tokens, keep, differ)}

    @staticmethod
    def validation_warning(metrics: dict[str, float]) -> str | None:
        """The line to print when a validation says something is wrong: the model is not listening."""
        return listening_warning(metrics["listening"]) if "listening" in metrics else None


def build_components(recipe: dict[str, Any], registry: Any | None = None) -> dict[str, nn.Module | None]:
    """The components of a resolved ``task = "pengi"`` recipe, by slot (None: switched off), each
    mapper built for the widths around it."""
    cfg = recipe["model"]

    def build(slot: str, **supplied: Any) -> nn.Module:
        return build_component(recipe, slot, registry, **supplied)

    audio_encoder = build("audio_encoder")
    lm = build("lm")
    text_encoder = build("text_encoder") if "text_encoder" in cfg else None
    d_proj, d_lm = cfg["projection_dim"], lm.hidden_size
    frames = getattr(audio_encoder, "frames", False)
    audio_mapper = build("audio_mapper", in_dim=d_proj, out_dim=d_lm)
    if frames and not audio_mapper.accepts_sequence:
        from pengi_kit.errors import RecipeError

        raise RecipeError(f"model.audio_mapper: '{cfg['audio_mapper']['name']}' maps one embedding, and "
                          f"'{cfg['audio_encoder']['name']}' gives a sequence of frames; use name = \"qformer\"")
    if not slot_enabled(cfg, "text_mapper"):  # a plain captioner, or the chat layout
        text_mapper = None
    elif text_encoder is not None:
        text_mapper = build("text_mapper", in_dim=d_proj, out_dim=d_lm)
    else:
        text_mapper = build("text_mapper", in_dim=d_lm, out_dim=d_lm, sequence=True)
    return {"audio_encoder": audio_encoder, "audio_mapper": audio_mapper, "text_mapper": text_mapper, "lm": lm,
            "text_encoder": text_encoder}


def build_pengi(recipe: dict[str, Any], registry: Any | None = None) -> PengiModel:
    """The Pengi model of a resolved recipe (``task = "pengi"``, ``model.layout = "prefix"``)."""
    cfg = recipe["model"]
    model = PengiModel(**build_components(recipe, registry), projection_dim=cfg["projection_dim"],
                       normalize=cfg["normalize"], prompt_length=cfg["prompt_length"],
                       target_length=cfg["target_length"], projection_dropout=cfg["projection_dropout"])
    model.set_trainable({slot: cfg[slot]["trainable"] for slot in COMPONENT_SLOTS if slot in cfg})
    return model
