"""The composite prefix-LM model (DESIGN.md section 1), built from a resolved recipe."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.composite import Composite, Projection  # Projection here too: pengi_kit.model.Projection
from pengi_kit.recipe import COMPONENT_SLOTS, slot_enabled

#: The listening check (docs/training.md): a model whose loss on its references rises by less
#: than this many nats per token when each clip's audio is swapped for another clip's does not
#: use its audio. A model that tells apart even two equally likely answers from the audio gains
#: ln 2 = 0.69 nats on that token, 0.05 or more per token over a target of up to ~14 tokens;
#: rounding (bf16) moves the difference by about 0.001.
LISTENING_THRESHOLD = 0.05


def listening_warning(listening: float, what: str = "validation loss") -> str | None:
    """The one-line warning for a listening check below :data:`LISTENING_THRESHOLD`, else None."""
    if not listening < LISTENING_THRESHOLD:  # NaN (nothing to compare): no warning
        return None
    return (f"pengi-kit: the model is not listening: its {what} changes by only {listening:.4f} "
            f"nats/token when clips' audio is swapped (below {LISTENING_THRESHOLD}); it answers from the "
            "prompt and the texts alone. Use a pretrained audio encoder (pengi-kit import, or pretrain one on "
            "your data) and/or unfreeze it, train longer, or check that the texts depend on the audio; "
            "see docs/training.md, 'The listening check'")


class PengiModel(Composite):
    """Audio + prompt -> prefix (B, 2k, D_lm) -> causal LM.

    Without a text encoder, the prompt is embedded by the LM's own token embeddings and
    reaches the LM through a sequence mapper (Pengi's ``base_no_text_enc``). Without a
    text mapper too, there is no prompt branch: the prefix is the audio prefix alone
    (a plain captioner such as Microsoft's CLAPCap) and prompts are ignored.
    """

    def __init__(self, audio_encoder: nn.Module, audio_mapper: nn.Module, text_mapper: nn.Module | None,
                 lm: nn.Module, text_encoder: nn.Module | None = None, projection_dim: int = 1024,
                 normalize: bool = True, prompt_length: int = 40, target_length: int = 77,
                 projection_dropout: float = 0.5) -> None:
        super().__init__()
        self.audio_encoder, self.text_encoder, self.lm = audio_encoder, text_encoder, lm
        self.audio_projection = Projection(audio_encoder.embed_dim, projection_dim, projection_dropout)
        self.text_projection = (Projection(text_encoder.embed_dim, projection_dim, projection_dropout)
                                if text_encoder else None)
        self.audio_mapper, self.text_mapper = audio_mapper, text_mapper
        self.normalize, self.prompt_length, self.target_length = normalize, prompt_length, target_length
        if text_mapper is None and text_encoder is not None:
            raise ValueError("a text encoder needs a text mapper")
        # the LM's input before the targets: the mapped prefix, and a chat template's tokens around it
        self.prefix_length = (audio_mapper.prefix_length + (text_mapper.prefix_length if text_mapper else 0)
                              + sum(len(ids) for ids in getattr(lm, "chat_ids", ())))
        self.sample_rate = int(audio_encoder.sample_rate)
        self.clip_seconds = audio_encoder.clip_seconds
        self.recipe: dict[str, Any] | None = None
        self.frozen: list[str] = []

    # -------------------------------------------------------------- inputs
    def tokenize_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.text_encoder is not None:
            return self.text_encoder.tokenize(prompts, self.prompt_length)
        tok = self.lm.tokenizer
        return dict(tok(list(prompts), padding="max_length", truncation=True,
                        max_length=self.prompt_length, return_tensors="pt"))

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

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Projected audio embedding (B, d_proj), normalised if the recipe says so."""
        return self._maybe_normalize(self.audio_projection(self.audio_encoder(audio)))

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   normalize: bool | None = None) -> torch.Tensor:
        """Projected text embedding (B, d_proj), normalised if the recipe says so (or ``normalize``)."""
        if self.text_encoder is None:
            raise ValueError("this model has no text encoder (its prompts go through the LM's embeddings)")
        embedding = self.text_projection(self.text_encoder(input_ids, attention_mask))
        normalize = self.normalize if normalize is None else normalize
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def audio_prefix(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) audio -> the audio half of the prefix (B, k, D_lm)."""
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

    def join_prefix(self, audio_prefix: torch.Tensor, text_prefix: torch.Tensor | None) -> torch.Tensor:
        """The LM prefix: audio half then prompt half (B, 2k, D_lm). A single prompt half
        (1, k, D_lm) serves every row; without a prompt branch the audio half is the prefix.
        With a chat template (``lm.chat_ids``), the template's tokens of a user turn and of the
        assistant's turn go before and after it (B, head + 2k + tail, D_lm)."""
        parts = [audio_prefix] if text_prefix is None else [audio_prefix,
                                                            text_prefix.expand(len(audio_prefix), -1, -1)]
        head, tail = getattr(self.lm, "chat_ids", ([], []))
        if head or tail:
            ids = torch.tensor(head + tail, dtype=torch.long, device=audio_prefix.device)
            chat = self.lm.embed(ids).to(audio_prefix.dtype).expand(len(audio_prefix), -1, -1)
            parts = [chat[:, :len(head)], *parts, chat[:, len(head):]]
        return torch.cat(parts, dim=1) if len(parts) > 1 else audio_prefix

    def prefix(self, audio: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
               compat: str = "none") -> torch.Tensor:
        """(B, T) audio and tokenised prompts -> the LM prefix (B, 2k, D_lm).

        ``compat="pengi"`` computes it as the reference wrapper does at inference (see
        :meth:`text_prefix`); training always uses the default."""
        return self.join_prefix(self.audio_prefix(audio), self.text_prefix(prompt_ids, prompt_mask, compat))

    # -------------------------------------------------------------- scoring and training
    def target_logprobs(self, prefix: torch.Tensor, target_ids: torch.Tensor,
                        target_mask: torch.Tensor) -> torch.Tensor:
        """Log-probability (float32) of each target token given the prefix and the targets
        before it (B, L); 0 where ``target_mask`` is 0. Training's loss and
        :meth:`pengi_kit.api.Pengi.log_likelihood` are both sums of it."""
        embeds = torch.cat([prefix, self.lm.embed(target_ids).to(prefix.dtype)], dim=1)
        mask = torch.cat([target_mask.new_ones(prefix.shape[:2]), target_mask], dim=1)
        logits, _ = self.lm(embeds, mask)
        k = prefix.shape[1]
        logits = logits[:, k - 1: -1].float()  # position t predicts target token t
        labels = target_ids.masked_fill(target_mask == 0, -100)  # cross_entropy's ignore_index: 0 there
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        return -nll.view_as(labels)

    def forward(self, audio: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                target_ids: torch.Tensor, target_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summed cross-entropy over target tokens and their count (the trainer normalises)."""
        logp = self.target_logprobs(self.prefix(audio, prompt_ids, prompt_mask), target_ids, target_mask)
        return {"loss_sum": -logp.sum(), "tokens": target_mask.sum()}

    # -------------------------------------------------------------- the engine's protocol
    def batch_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A collated batch (:mod:`pengi_kit.data.collate`) -> forward's inputs (CPU tensors, batch-first)."""
        prompts, targets = self.tokenize_prompts(batch["prompts"]), self.tokenize_targets(batch["texts"])
        return {"audio": batch["audio"], "prompt_ids": prompts["input_ids"], "prompt_mask": prompts["attention_mask"],
                "target_ids": targets["input_ids"], "target_mask": targets["attention_mask"]}

    @staticmethod
    def loss_units(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The terms ``loss_sum`` sums over: target tokens."""
        return inputs["target_mask"].sum()

    def example_inputs(self, n: int = 1, target_length: int = 4) -> dict[str, torch.Tensor]:
        """Forward inputs of ``n`` made-up examples on the model's device: silent clips (10 s where the
        encoder takes any length), a one-word prompt, ``target_length`` target tokens."""
        dev = next(self.parameters()).device
        prompts = self.tokenize_prompts(["a"] * n)
        ids = torch.zeros(n, target_length, dtype=torch.long, device=dev)
        return {"audio": self.silent_clips(n), "prompt_ids": prompts["input_ids"].to(dev),
                "prompt_mask": prompts["attention_mask"].to(dev), "target_ids": ids, "target_mask": torch.ones_like(ids)}

    @torch.no_grad()
    def validation_sums(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{metric: float64 [sum, count]}`` over one batch: the validation loss and the listening check.

        The listening check (docs/training.md) pairs clip i's prompt and target with clip i-1's
        audio prefix (a roll by one: deterministic, never a clip with itself) and compares the
        loss with the clip's own; the audio prefixes are computed once. A batch of one clip
        counts 0 for it."""
        audio = self.audio_prefix(inputs["audio"])
        text = self.text_prefix(inputs["prompt_ids"], inputs["prompt_mask"])
        ids, mask = inputs["target_ids"], inputs["target_mask"]
        own = -self.target_logprobs(self.join_prefix(audio, text), ids, mask).double().sum()
        tokens = mask.sum().double()
        sums = {"valid_loss": torch.stack([own, tokens])}
        if len(audio) < 2:
            return sums
        shuffled = -self.target_logprobs(self.join_prefix(audio.roll(1, dims=0), text), ids, mask).double().sum()
        return {**sums, "valid_loss_shuffled": torch.stack([shuffled, tokens]),
                "listening": torch.stack([shuffled - own, tokens])}

    def set_trainable(self, flags: dict[str, bool]) -> None:
        """Freeze or unfreeze each component. The projections always train, as in Pengi.

        An LM with LoRA adapters (``[model.lm.lora]``) keeps its own weights frozen and trains
        the adapters; it runs in train mode (adapter dropout), as LoRA fine-tuning does."""
        super().set_trainable(flags)
        adapters = list(getattr(self.lm, "adapter_parameters", list)())
        for param in adapters:
            param.requires_grad_(True)
        if adapters:
            self.frozen = [slot for slot in self.frozen if slot != "lm"]


def build_model(recipe: dict[str, Any], registry: Any | None = None) -> nn.Module:
    """The model a resolved recipe (``pengi_kit.recipe.load_recipe``) describes: the composite
    Pengi model, or for ``task = "tagging" | "contrastive"`` an encoder to pretrain
    (:mod:`pengi_kit.pretraining`). Each offers the engine's protocol (:class:`pengi_kit.contracts.Trainable`)."""
    if registry is None:
        from pengi_kit.plugins import registry as get_registry
        registry = get_registry()
    if recipe.get("task", "pengi") != "pengi":
        from pengi_kit.pretraining import build_pretraining_model

        return build_pretraining_model(recipe, registry)
    cfg = recipe["model"]

    def build(slot: str, **supplied: Any) -> nn.Module:
        table = dict(cfg[slot])
        name = table.pop("name")
        table.pop("trainable")
        factory = registry.get(COMPONENT_SLOTS[slot][0], name).load()
        return factory(**supplied, **table)

    audio_encoder = build("audio_encoder")
    lm = build("lm")
    text_encoder = build("text_encoder") if "text_encoder" in cfg else None
    d_proj, d_lm = cfg["projection_dim"], lm.hidden_size
    audio_mapper = build("audio_mapper", in_dim=d_proj, out_dim=d_lm)
    if not slot_enabled(cfg, "text_mapper"):
        text_mapper = None
    elif text_encoder is not None:
        text_mapper = build("text_mapper", in_dim=d_proj, out_dim=d_lm)
    else:
        text_mapper = build("text_mapper", in_dim=d_lm, out_dim=d_lm, sequence=True)
    model = PengiModel(audio_encoder, audio_mapper, text_mapper, lm, text_encoder, d_proj,
                       cfg["normalize"], cfg["prompt_length"], cfg["target_length"], cfg["projection_dropout"])
    model.set_trainable({slot: cfg[slot]["trainable"] for slot in COMPONENT_SLOTS if slot in cfg})
    model.recipe = recipe
    return model
