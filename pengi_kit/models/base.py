"""What every model shares: :class:`Composite`, components in named slots of which some are
frozen, the engine's protocol defaults, and :class:`Projection`, the head that maps an
encoder's embedding into a shared space (Microsoft CLAP's ``Projection``: its parameter
names, ``linear1``/``linear2``/``layer_norm``, are the published checkpoints' names).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.errors import PengiKitError
from pengi_kit.folders import save_encoder_folder

__all__ = ["Composite", "Projection", "build_component", "component_table", "write_encoder_folder"]


class Projection(nn.Module):
    """Pengi's projection head: linear, GELU, linear, dropout, residual, LayerNorm."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x)
        return self.layer_norm(h + self.drop(self.linear2(F.gelu(h))))


def string_keys(strings: list[str]) -> torch.Tensor:
    """An int64 key per string, equal for equal strings on every process (Python's ``hash`` of a
    string differs between processes): tensors that travel with a batch and across ranks."""
    digests = (hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest() for s in strings)
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests], dtype=torch.long)


def build_component(recipe: dict[str, Any], slot: str, registry: Any = None, **supplied: Any) -> nn.Module:
    """The component of ``[model.<slot>]``: its registered factory called with the table's
    arguments (``trainable`` aside) and what the model supplies (dimensions)."""
    from pengi_kit.recipe import COMPONENT_SLOTS

    if registry is None:
        from pengi_kit.plugins import registry as get_registry
        registry = get_registry()
    table = dict(recipe["model"][slot])
    name = table.pop("name")
    table.pop("trainable", None)
    return registry.get(COMPONENT_SLOTS[slot][0], name).load()(**supplied, **table)


def component_table(recipe: dict[str, Any], slot: str) -> tuple[str, dict[str, Any]]:
    """A recipe slot's component name and build arguments, without ``trainable`` and the weight
    source (an exported folder replaces it)."""
    table = dict(recipe["model"][slot])
    name = table.pop("name")
    for key in ("trainable", "pretrained"):
        table.pop(key, None)
    return name, table


def write_encoder_folder(folder: Path, name: str, table: dict[str, Any], sd: Mapping[str, torch.Tensor],
                         source: dict[str, Any]) -> None:
    """An encoder folder (:func:`pengi_kit.folders.save_encoder_folder`) of audio encoder ``name``,
    checked by building it from ``table`` with ``pretrained`` = the folder."""
    from pengi_kit.plugins import registry

    save_encoder_folder(folder, name, table, sd, source)
    registry().get("audio_encoder", name).load()(**table, pretrained=str(folder))


class Composite(nn.Module):
    """A model whose components sit in named slots (``audio_encoder``, ``lm`` ...), some frozen.

    Subclasses implement the engine's protocol (:class:`pengi_kit.contracts.Trainable`); this
    class gives its shared parts: freezing, the audio contract, made-up clips, and the FLOPs of
    a training step (:mod:`pengi_kit.models.flops`), measured once per shape."""

    frozen: list[str]
    recipe: dict[str, Any] | None

    def __init__(self, audio_encoder: nn.Module) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder
        self.sample_rate = int(audio_encoder.sample_rate)
        self.clip_seconds = audio_encoder.clip_seconds
        self.recipe = None  # the resolved recipe, set by build_model
        self.origin: dict[str, Any] = {}  # which checkpoint (step, best metric) the weights are from
        self.frozen = []
        self._flops: dict[Any, float] = {}
        self.encoder_cache: Any = None  # an EncoderCache of the frozen audio encoder (train.encoder_cache)

    def set_trainable(self, flags: dict[str, bool]) -> None:
        """Freeze or unfreeze each slot's component; everything else (heads, projections) trains.

        A component with LoRA adapters (``[model.lm.lora]``, ``[model.audio_encoder.lora]``) keeps
        its own weights frozen and trains the adapters; it runs in train mode (adapter dropout), as
        LoRA fine-tuning does."""
        self.requires_grad_(True)
        self.frozen = [slot for slot, trainable in flags.items() if not trainable and getattr(self, slot, None)]
        for slot in list(self.frozen):
            component = getattr(self, slot)
            component.requires_grad_(False)
            adapters = list(getattr(component, "adapter_parameters", list)())
            for param in adapters:
                param.requires_grad_(True)
            if adapters:
                self.frozen.remove(slot)

    def train(self, mode: bool = True) -> "Composite":
        """Frozen components stay in eval mode: no dropout, no batch-norm statistics drift."""
        super().train(mode)
        for slot in self.frozen:
            getattr(self, slot).eval()
        return self

    @property
    def frames(self) -> bool:
        """Whether the audio encoder gives frames and a mask (Whisper), not one embedding per clip."""
        return bool(getattr(self.audio_encoder, "frames", False))

    def use_encoder_cache(self, folder: str | Path) -> None:
        """Keep the frozen audio encoder's outputs in ``folder`` (:mod:`pengi_kit.models.encoder_cache`)."""
        from pengi_kit.models.encoder_cache import EncoderCache

        self.encoder_cache = EncoderCache(folder, self.audio_encoder)

    def run_audio_encoder(self, audio: torch.Tensor, lengths: torch.Tensor | None = None
                          ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The audio encoder's output (an embedding per clip, or frames and their mask), read from
        the encoder cache where one is set and the encoder is frozen."""
        if self.encoder_cache is not None and "audio_encoder" in self.frozen:
            return self.encoder_cache(audio, lengths)
        return self.audio_encoder(audio, lengths) if self.frames else self.audio_encoder(audio)

    def encode_clips(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """One embedding per clip (B, embed_dim): the encoder's, or its frames pooled by its own
        ``pool(frames, mask)``, else averaged over each clip's mask (``lengths``: each clip's
        samples in the zero-padded batch)."""
        if not self.frames:
            return self.run_audio_encoder(audio)
        frames, mask = self.run_audio_encoder(audio, lengths)
        if hasattr(self.audio_encoder, "pool"):
            return self.audio_encoder.pool(frames, mask)
        weight = mask.to(frames.dtype)[..., None]
        return (frames * weight).sum(1) / weight.sum(1).clamp(min=1)

    def silent_clips(self, n: int) -> torch.Tensor:
        """``n`` silent clips on the model's device, at its ``sample_rate`` and ``clip_seconds``
        (where the encoder takes any length: 10 s, or 1 s for a frame encoder, whose clips become
        as many LM positions as they need): made-up inputs for ``example_inputs``."""
        device = next(self.parameters()).device
        seconds = self.clip_seconds or (1.0 if self.frames else 10.0)
        return torch.zeros(n, int(self.sample_rate * seconds), device=device)

    # -------------------------------------------------------------- the engine's protocol
    text_targets = False  # a tagger's or a CLAP's text is no LM target to pad: batches are not sorted by it

    @staticmethod
    def loss_units(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Clips: one loss term each (on the inputs' device, where the trainer sums it over processes)."""
        return torch.tensor(len(inputs["audio"]), device=inputs["audio"].device)

    def lm_tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Positions an LM computes for these inputs (None: the model has no LM)."""
        return None

    def flops(self, inputs: dict[str, torch.Tensor]) -> float:
        """FLOPs of a training step (forward and backward) over ``inputs``: the batch size times
        one example's count, measured once (:func:`pengi_kit.models.flops.step_flops`)."""
        if "example" not in self._flops:
            from pengi_kit.models.flops import step_flops

            self._flops["example"] = step_flops(self, self.example_inputs(1))
        return len(inputs["audio"]) * self._flops["example"]

    # -------------------------------------------------------------- exports
    def _recipe(self) -> dict[str, Any]:
        if self.recipe is None:
            raise PengiKitError("this model was not built from a recipe (pengi_kit.models.build_model), so it "
                                "cannot name its components in an exported folder")
        return self.recipe

    def _source(self) -> dict[str, Any]:
        recipe = self._recipe()
        return {"format": "pengi-kit", "variant": recipe["task"], "recipe": recipe["name"],
                "output_dir": recipe["train"]["output_dir"], **self.origin}
