"""The chat layout (``model.layout = "chat"``, docs/training.md "Conversations"): a conversation
rendered with the LM's chat template, each ``<audio>`` replaced by that clip's audio tokens
(embeddings, so nothing is added to the LM's vocabulary), several clips and turns per example,
and the loss on the assistant turns only.

Which tokens the loss covers is found by rendering, not from template markers (most templates
have none): for each assistant turn, the conversation up to it with the generation prompt,
and through it; the text between the two is the turn (its answer and the template's end of
turn), tokenised on its own, as generation produces it after the generation prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.data.conversations import AUDIO, single_turn
from pengi_kit.errors import PengiKitError, RecipeError
from pengi_kit.models.base import string_keys
from pengi_kit.models.listening import listening_sums, partners
from pengi_kit.models.pengi import PengiModel, Prefix, build_components, prefix_rows

__all__ = ["AUDIO_SLOT", "ChatModel", "ChatTemplate", "Encoded"]

#: in encoded ids, where a clip's audio tokens go
AUDIO_SLOT = -1
_ANSWER = "PENGIKITANSWER"


@dataclass(frozen=True)
class Encoded:
    """A rendered conversation: token ids with :data:`AUDIO_SLOT` at each clip, and which of them
    the loss covers (the assistant turns)."""

    ids: list[int]
    train: list[bool]


class ChatTemplate:
    """A chat template (Jinja, as transformers' ``apply_chat_template`` takes it) over a tokenizer."""

    def __init__(self, tokenizer: Any, template: str) -> None:
        self.tokenizer, self.template = tokenizer, template
        probe = [{"role": "user", "content": "q"}]
        before = self.render(probe, True)
        through = self.render(probe + [{"role": "assistant", "content": _ANSWER}])
        if not through.startswith(before) or _ANSWER not in through[len(before):]:
            raise PengiKitError("the chat template does not render an answer after its generation prompt "
                                "(add_generation_prompt); the chat layout needs a template that does")
        #: what the template writes after an answer ("<|im_end|>\n", the end-of-text token ...)
        self.answer_end = through.split(_ANSWER, 1)[1]
        end = self.tokenize(self.answer_end)
        self.end_of_turn_id = int(end[0]) if end else int(tokenizer.eos_token_id)

    def tokenize(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]] if text else []

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as exc:  # noqa: BLE001 - a Jinja error, or the template's own raise_exception
            raise PengiKitError(f"the chat template cannot render a conversation ({type(exc).__name__}: {exc}); "
                                "check the conversation's roles, or give model.lm.chat_template") from None

    def encode(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> Encoded:
        """Token ids of ``messages`` (with the generation prompt after them, for an answer to come)."""
        text = self.render(messages, generation_prompt)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, through = self.render(messages[:i], True), self.render(messages[:i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise PengiKitError(f"the chat template renders the turns before message {i + 1} differently "
                                    "once later turns follow (some templates drop earlier reasoning), so the "
                                    "answer's tokens cannot be told apart; give model.lm.chat_template a template "
                                    "that renders each turn the same wherever it is")
            spans.append((len(before), len(through)))
        bounds = sorted({0, len(text), *(x for span in spans for x in span)})
        ids: list[int] = []
        train: list[bool] = []
        for a, b in zip(bounds, bounds[1:]):
            inside = any(s <= a and b <= e for s, e in spans)
            for n, piece in enumerate(text[a:b].split(AUDIO)):
                if n:
                    ids.append(AUDIO_SLOT)
                    train.append(False)
                tokens = self.tokenize(piece)
                ids += tokens
                train += [inside] * len(tokens)
        return Encoded(ids, train)


@torch.no_grad()
def check_packing(lm: nn.Module) -> None:
    """Refuse an LM whose attention does not keep packed sequences apart: two made-up sequences in
    one row (positions starting again at 0, no mask) must give the logits they give alone."""
    config = getattr(getattr(lm, "model", None), "config", None)
    name = getattr(config, "model_type", type(lm).__name__)
    was = lm.training
    lm.eval()
    try:
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(1, n, lm.hidden_size, generator=g) * 0.02 for n in (3, 4))
        param = next(lm.parameters())
        a, b = a.to(param), b.to(param)
        alone = [lm(x, torch.ones(x.shape[:2], dtype=torch.long, device=param.device))[0] for x in (a, b)]
        position = torch.tensor([[0, 1, 2, 0, 1, 2, 3]], device=param.device)
        packed, _ = lm(torch.cat([a, b], 1), None, position_ids=position)
        same = torch.allclose(packed, torch.cat(alone, 1), atol=1e-4, rtol=1e-3)
    except Exception as exc:  # noqa: BLE001 - an LM that takes no position ids or no missing mask
        raise RecipeError(f"train.pack: the LM ({name}) cannot take packed sequences ({type(exc).__name__}: "
                          f"{exc}); set train.pack = false") from None
    finally:
        lm.train(was)
    if not same:
        raise RecipeError(f"train.pack: the LM ({name}) lets packed sequences attend to each other (its attention "
                          "ignores the positions that start again); set train.pack = false")


class ChatModel(PengiModel):
    """Audio encoder, projection and audio mapper as in Pengi; no prompt branch: the conversation's
    text reaches the LM through its own embeddings, and each clip's mapped tokens stand where its
    ``<audio>`` is. ``template``: the chat template (Jinja)."""

    layout = "chat"

    def __init__(self, audio_encoder: nn.Module, audio_mapper: nn.Module, lm: nn.Module, template: str,
                 projection_dim: int = 1024, normalize: bool = True, target_length: int = 77,
                 projection_dropout: float = 0.5, pack: bool = False) -> None:
        super().__init__(audio_encoder, audio_mapper, None, lm, None, projection_dim, normalize, 1, target_length,
                         projection_dropout)
        self.template = ChatTemplate(lm.tokenizer, template)
        self.pack = pack
        if pack:
            check_packing(lm)
        lm.end_of_turn_id = self.template.end_of_turn_id  # what ends a generated answer
        self.prefix_length = audio_mapper.prefix_length  # per clip

    # -------------------------------------------------------------- inputs
    def check_conversation(self, messages: list[dict[str, str]]) -> str | None:
        """Why this model cannot train on a conversation (its template cannot render it, or it is
        longer than the LM's positions), or None: the trainer vets conversation files with it
        before training (``PengiDataset.vet``)."""
        try:
            ids = self.template.encode(messages).ids
        except PengiKitError as exc:
            return str(exc)
        slots = ids.count(AUDIO_SLOT)
        length = len(ids) - slots + slots * self.prefix_length
        if length > self.max_positions:
            return (f"a conversation of {length} positions (text and audio tokens) is longer than the LM's "
                    f"{self.max_positions}; shorten it, or use an LM of more positions")
        return None

    def tokenize_targets(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Answers as the template ends them (``answer_end``), right-padded: what follows a chat
        prefix (:meth:`chat_prefix`) when the model answers ``text``."""
        rows = [self.template.tokenize(t + self.template.answer_end)[: self.target_length] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row, dtype=torch.long), 1
        return {"input_ids": ids, "attention_mask": mask}

    def encode_batch(self, conversations: list[list[dict[str, str]]], generation_prompt: bool = False
                     ) -> dict[str, torch.Tensor]:
        """``input_ids`` (B, L) with :data:`AUDIO_SLOT` at each clip, right-padded, its
        ``attention_mask`` and the loss's ``target_mask`` (B, L)."""
        encoded = [self.template.encode(c, generation_prompt) for c in conversations]
        width = max(len(e.ids) for e in encoded)
        ids = torch.full((len(encoded), width), self.lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        train = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, :len(e.ids)] = 1
            train[i, :len(e.ids)] = torch.tensor(e.train, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "target_mask": train}

    def splice(self, clips: list[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor,
               target_mask: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each row's LM input (L_i, D): its text tokens' embeddings with the next of ``clips``
        (k_i, D) at each :data:`AUDIO_SLOT`; and its labels (L_i,): the token where
        ``target_mask`` is 1, else -100 (audio and padding too)."""
        slots = int((input_ids == AUDIO_SLOT).sum())
        if slots != len(clips):
            raise PengiKitError(f"the batch places {slots} clips but holds {len(clips)}")
        text = self.lm.embed(input_ids.clamp(min=0))
        labels = input_ids if target_mask is None else input_ids.masked_fill(target_mask == 0, -100)
        at, rows = iter(clips), []
        for i in range(len(input_ids)):
            n = int(attention_mask[i].sum())
            cuts = (input_ids[i, :n] == AUDIO_SLOT).nonzero().flatten().tolist()
            embeds, marks, start = [], [], 0
            for cut in [*cuts, n]:
                embeds.append(text[i, start:cut])
                marks.append(labels[i, start:cut])
                if cut < n:
                    clip = next(at).to(text.dtype)
                    embeds.append(clip)
                    marks.append(labels.new_full((len(clip),), -100))
                start = cut + 1
            rows.append((torch.cat(embeds), torch.cat(marks)))
        longest = max((len(e) for e, _ in rows), default=0)
        if longest > self.max_positions:
            raise PengiKitError(f"a conversation of {longest} positions (text and audio tokens) is longer than the "
                                f"LM's {self.max_positions}; shorten it, or use an LM of more positions")
        return rows

    def chat_prefix(self, audio_tokens: Prefix, conversations: list[list[dict[str, str]]]) -> Prefix:
        """The LM input before each row's answer: its conversation with the generation prompt and its
        clips' tokens (``audio_tokens``: one row per clip, in order), padded on the left with a mask
        where rows differ in length."""
        from pengi_kit.generation import pad_prefixes

        batch = self.encode_batch(conversations, generation_prompt=True)
        device = audio_tokens[0].device if isinstance(audio_tokens, tuple) else audio_tokens.device
        rows = self.splice(prefix_rows(audio_tokens), batch["input_ids"].to(device), batch["attention_mask"])
        embeds, mask = pad_prefixes([row for row, _ in rows])
        return embeds if mask is None else (embeds, mask)

    def join_prefix(self, audio_prefix: Prefix, text_prefix: Any) -> Prefix:
        """Pengi's (clip, prompt) as one user turn (:func:`~pengi_kit.data.conversations.single_turn`):
        ``text_prefix`` is the list of prompts (:meth:`prompt_prefix`)."""
        return self.chat_prefix(audio_prefix, [single_turn(p) for p in text_prefix])

    def prompt_prefix(self, prompts: list[str], compat: str = "none") -> Any:
        """The chat layout has no prompt branch: the prompts themselves, for :meth:`join_prefix`."""
        return list(prompts)

    # -------------------------------------------------------------- scoring and training
    def sequence_logprobs(self, audio_tokens: Prefix, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's summed log-probability of the tokens ``target_mask`` marks (B,), and their count."""
        nll, tokens = self._nll(self.splice(prefix_rows(audio_tokens), input_ids, attention_mask, target_mask))
        return -nll, tokens

    def _nll(self, rows: list[tuple[torch.Tensor, torch.Tensor]], positions: list[torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence's summed negative log-likelihood of its labelled tokens, and their count (B,):
        ``rows`` of LM inputs (L_i, D) and labels (L_i,), right-padded together; with ``positions``
        (packed rows, :meth:`packed_nll`), each sequence's position ids and no mask."""
        width = max(len(e) for e, _ in rows)
        embeds = rows[0][0].new_zeros(len(rows), width, rows[0][0].shape[-1])
        labels = rows[0][1].new_full((len(rows), width), -100)
        mask = torch.zeros_like(labels)
        for i, (e, m) in enumerate(rows):
            embeds[i, :len(e)], labels[i, :len(m)], mask[i, :len(e)] = e, m, 1
        if positions is None:
            logits, _ = self.lm(embeds, mask)
        else:
            position = torch.zeros_like(labels)
            for i, p in enumerate(positions):  # the padding after a row: a sequence of its own
                position[i] = torch.cat([p, torch.arange(width - len(p), device=p.device)])
            logits, _ = self.lm(embeds, None, position_ids=position)
        labels = labels[:, 1:]  # position t predicts token t + 1
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                              reduction="none").view_as(labels)
        return nll.sum(1), (labels != -100).sum(1)

    def clip_tokens(self, audio: torch.Tensor, input_ids: torch.Tensor,
                    audio_lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each clip's audio tokens (k_i, D) in the order the rows place them: ``audio`` (B, C, T)
        holds row b's clips in its first ``count_b`` places, ``count_b`` the row's
        :data:`AUDIO_SLOT` count."""
        held = self._held(audio, input_ids)
        if not bool(held.any()):
            return []
        return prefix_rows(self.audio_prefix(audio[held], None if audio_lengths is None else audio_lengths[held]))

    @staticmethod
    def _held(audio: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, C): which places of ``audio`` hold a clip."""
        counts = (input_ids == AUDIO_SLOT).sum(1)
        return torch.arange(audio.shape[1], device=audio.device)[None] < counts.to(audio.device)[:, None]

    def packed_nll(self, audio_tokens: list[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed negative log-likelihood of the tokens ``target_mask`` marks, and their count,
        with the rows packed (first fit, longest first) into as few sequences as hold them, none
        longer than the longest row: each row keeps its own positions (from 0) and attends only
        to itself, so the loss is the unpacked one, with less padding."""
        rows = self.splice(audio_tokens, input_ids, attention_mask, target_mask)
        width = max(len(e) for e, _ in rows)
        bins: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(rows)), key=lambda i: -len(rows[i][0])):
            at = next((b for b, free in enumerate(room) if free >= len(rows[i][0])), None)
            if at is None:
                bins.append([])
                room.append(width)
                at = len(bins) - 1
            bins[at].append(i)
            room[at] -= len(rows[i][0])
        packed = [(torch.cat([rows[i][0] for i in members]), torch.cat([rows[i][1] for i in members]))
                  for members in bins]
        positions = [torch.cat([torch.arange(len(rows[i][0]), device=input_ids.device) for i in members])
                     for members in bins]
        nll, tokens = self._nll(packed, positions)
        return nll.sum(), tokens.sum()

    def forward(self, audio: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                target_mask: torch.Tensor, clip_key: torch.Tensor | None = None,
                audio_lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Summed cross-entropy over the assistant turns' tokens and their count; ``audio``
        (B, C, T): each row's clips in the order its ``<audio>`` come (:meth:`clip_tokens`).
        With ``pack`` (``train.pack``), rows share sequences (:meth:`packed_nll`)."""
        clips = self.clip_tokens(audio, input_ids, audio_lengths)
        if self.pack:
            nll, tokens = self.packed_nll(clips, input_ids, attention_mask, target_mask)
            return {"loss_sum": nll, "tokens": tokens}
        logp, tokens = self.sequence_logprobs(clips, input_ids, attention_mask, target_mask)
        return {"loss_sum": -logp.sum(), "tokens": tokens.sum()}

    # -------------------------------------------------------------- the engine's protocol
    def batch_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A collated batch -> forward's inputs, batch-first: conversations (``batch["conversations"]``,
        their clips in ``audio`` one after another), or Pengi's rows as one turn each. ``audio``
        becomes (B, C, T), a row's clips in its first places (zeros after), as do the clips'
        ``audio_lengths`` and ``clip_key`` (B, C)."""
        conversations = batch.get("conversations") or [single_turn(p, t) for p, t in zip(batch["prompts"],
                                                                                          batch["texts"])]
        encoded = self.encode_batch(conversations)
        flat = batch["audio"]
        lengths = batch.get("audio_lengths", torch.full((len(flat),), flat.shape[-1]))
        keys = string_keys(batch.get("clips") or [f"clip:{i}" for i in range(len(flat))])
        counts = (encoded["input_ids"] == AUDIO_SLOT).sum(1)
        if int(counts.sum()) != len(flat):
            raise PengiKitError(f"the batch places {int(counts.sum())} clips but holds {len(flat)}")
        width = int(counts.max()) if len(counts) else 0
        audio = flat.new_zeros(len(counts), width, flat.shape[-1])
        per_row = {"audio_lengths": lengths.new_zeros(len(counts), width), "clip_key": keys.new_zeros(len(counts), width)}
        held = self._held(audio, encoded["input_ids"])
        audio[held], per_row["audio_lengths"][held], per_row["clip_key"][held] = flat, lengths, keys
        inputs = {"audio": audio, **encoded, "clip_key": per_row["clip_key"]}
        if self.frames:  # a frame encoder keeps each clip's own frames
            inputs["audio_lengths"] = per_row["audio_lengths"]
        return inputs

    def lm_tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Text tokens and audio tokens the LM computes, padding aside."""
        slots = (inputs["input_ids"] == AUDIO_SLOT).sum()
        return inputs["attention_mask"].sum() - slots + slots * self.prefix_length

    def flops(self, inputs: dict[str, torch.Tensor]) -> float:
        """FLOPs of a training step: the rows times one one-clip example's count at the batch's
        padded width, a parabola fitted through three measured widths."""
        from pengi_kit.models.flops import fit_quadratic, step_flops

        if "width" not in self._flops:
            examples = [self.example_inputs(1, n) for n in (4, 8, 16)]
            self._flops["width"] = fit_quadratic({e["input_ids"].shape[1]: step_flops(self, e) for e in examples})
        c0, c1, c2 = self._flops["width"]
        width = inputs["input_ids"].shape[1]
        return len(inputs["input_ids"]) * (c0 + c1 * width + c2 * width * width)

    def example_inputs(self, n: int = 1, target_length: int = 4) -> dict[str, torch.Tensor]:
        """Forward inputs of ``n`` made-up one-clip conversations on the model's device: silent
        clips, a one-word question, an answer of ``target_length`` words."""
        dev = next(self.parameters()).device
        batch = self.encode_batch([single_turn("a", " ".join(["a"] * target_length))] * n)
        return {"audio": self.silent_clips(n)[:, None], **{k: v.to(dev) for k, v in batch.items()}}

    @torch.no_grad()
    def validation_sums(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The validation loss, and the listening check with each clip's tokens swapped for those of
        another clip (:func:`~pengi_kit.models.listening.partners` of the clip keys)."""
        audio = self.clip_tokens(inputs["audio"], inputs["input_ids"], inputs.get("audio_lengths"))
        args = inputs["input_ids"], inputs["attention_mask"], inputs["target_mask"]
        logp, tokens = self.sequence_logprobs(audio, *args)
        sums = {"valid_loss": torch.stack([-logp.double().sum(), tokens.double().sum()])}
        keys = inputs["clip_key"][self._held(inputs["audio"], inputs["input_ids"])] if "clip_key" in inputs else \
            torch.arange(len(audio))
        index = partners(keys.tolist())
        if min(index, default=-1) < 0:
            return sums
        swapped, _ = self.sequence_logprobs([audio[j] for j in index], *args)
        # the row each row's first clip is swapped in from: do the two answers differ? (rows without
        # a clip are left out: nothing of theirs is swapped)
        row_of = (inputs["input_ids"] == AUDIO_SLOT).nonzero()[:, 0].tolist()
        answers = [tuple(ids[m.bool()].tolist()) for ids, m in zip(inputs["input_ids"], inputs["target_mask"])]
        first = {row: clip for clip, row in reversed(list(enumerate(row_of)))}
        keep = torch.tensor([r in first for r in range(len(answers))], device=logp.device)
        differ = torch.tensor([r in first and answers[row_of[index[first[r]]]] != answers[r]
                               for r in range(len(answers))], device=logp.device)
        return {**sums, **listening_sums(-logp, -swapped, tokens, keep, differ)}


def build_chat(recipe: dict[str, Any], registry: Any | None = None) -> ChatModel:
    """The chat-layout model of a resolved recipe (``model.layout = "chat"``). Its template is
    ``model.lm.chat_template`` where that is the template itself, else the tokenizer's own, else
    the default (:data:`pengi_kit.components.hf_causal_lm.DEFAULT_CHAT_TEMPLATE`)."""
    from pengi_kit.components.hf_causal_lm import template_text
    from pengi_kit.recipe import COMPONENT_SLOTS

    cfg = recipe["model"]
    parts = build_components(recipe, registry)
    lm = parts["lm"]
    model = ChatModel(parts["audio_encoder"], parts["audio_mapper"], lm,
                      template_text(lm.tokenizer, cfg["lm"].get("chat_template")), cfg["projection_dim"],
                      cfg["normalize"], cfg["target_length"], cfg["projection_dropout"], recipe["train"]["pack"])
    model.set_trainable({slot: cfg[slot]["trainable"] for slot in COMPONENT_SLOTS if slot in cfg})
    return model
