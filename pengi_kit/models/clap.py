"""CLAP: one model for contrastive audio-text embeddings, trained in pengi-kit
(``task = "contrastive"``, docs/pretraining.md) or imported (``pengi-kit import laion-clap |
ms-clap``, docs/checkpoints.md), read from and written to CLAP folders (:mod:`pengi_kit.folders`).

:class:`ClapModel` holds an audio and a text encoder, each followed by a projection head into
a joint space where embeddings are L2-normalised and compared by cosine similarity scaled by a
learned temperature. Two kinds of heads:

- ``"projection"``: Pengi / Microsoft CLAP's :class:`~pengi_kit.models.base.Projection`
  (``linear1``, ``linear2``, ``layer_norm``) and one ``logit_scale``. Contrastive pretraining
  trains these; Microsoft CLAP 2022/2023 imports into them. The names are Pengi's, so the heads
  also initialise a Pengi model's projections (``model.load_state_dict(heads, strict=False)``).
- ``"mlp"``: LAION-CLAP's Linear, ReLU, Linear (keys ``0`` and ``2``) and two temperatures,
  ``logit_scale_a`` / ``logit_scale_t``; with ``transforms``, LAION's second-loss MLPs
  (``audio_transform`` / ``text_transform``), kept for fine-tuning, unused for embeddings.

Training (either kind) minimises the symmetric InfoNCE over the global batch: on several
processes, every process's audio and text embeddings are gathered with gradients
(``torch.distributed.nn.functional.all_gather``), and each process's ``loss_sum`` adds, for
each of its own rows, (CE(audio -> every text) + CE(text -> every clip)) / 2; ``loss_units``
counts its rows. With ``train.grad_accum`` > 1 the negatives are those of one micro-batch on
every process. Identical texts (the same caption for two clips, or a class text such as "this
is a sound of rain" for many) are not negatives of each other's clips: those logits are masked
out of both directions, so the loss can still reach zero. (Two rows of the same clip with
different captions are not negatives either: rows carry their clip's name.) In training
the scale is clamped at 100, as CLIP does; :meth:`ClapModel.logits` uses the stored value, as the
published models do.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.errors import PengiKitError
from pengi_kit.folders import HEADS_FILE, load_strict, read_clap_info, staged, write_clap_files
from pengi_kit.models.base import Composite, Projection, build_component, component_table, string_keys

__all__ = ["CLAP_FOLDER", "ClapModel", "build_clap", "load_clap", "write_clap_folder"]

CLAP_FOLDER = "clap"  # what a contrastive run exports, under its output directory
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: a temperature of at least 0.01


class MLPHead(nn.Module):
    """LAION's ``MLPLayers(units=[d, d, d])``: Linear, ReLU, Dropout, Linear (keys 0 and 3)."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.sequential = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequential(x)


def _laion_projection(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))


def text_keys(texts: list[str]) -> torch.Tensor:
    """An int64 key per text, equal for texts that are the same caption (case and spacing aside)."""
    return string_keys([" ".join(t.lower().split()) for t in texts])


class ClapModel(Composite):
    """Audio and text towers with projection heads into a joint space (see the module docstring).

    >>> clap = load_clap("weights/laion-clap")                 # doctest: +SKIP
    >>> a = clap.embed_audio(waveforms)                         # doctest: +SKIP
    >>> t = clap.embed_text(["a dog barks", "rain"])           # doctest: +SKIP
    >>> clap.logits(a, t).softmax(-1)                          # doctest: +SKIP
    """

    def __init__(self, audio_encoder: nn.Module, text_encoder: nn.Module, projection_dim: int = 1024,
                 heads: str = "projection", temperature: float = 0.07, text_length: int = 77,
                 projection_dropout: float = 0.5, transforms: bool = False) -> None:
        super().__init__(audio_encoder)
        self.text_encoder, self.text_length, self.projection_dim, self.heads = (text_encoder, text_length,
                                                                                 projection_dim, heads)
        init = math.log(1.0 / temperature)
        if heads == "mlp":
            self.audio_projection = _laion_projection(audio_encoder.embed_dim, projection_dim)
            self.text_projection = _laion_projection(text_encoder.embed_dim, projection_dim)
            self.logit_scale_a = nn.Parameter(torch.tensor(init))
            self.logit_scale_t = nn.Parameter(torch.tensor(init))
        elif heads == "projection":
            self.audio_projection = Projection(audio_encoder.embed_dim, projection_dim, projection_dropout)
            self.text_projection = Projection(text_encoder.embed_dim, projection_dim, projection_dropout)
            self.logit_scale = nn.Parameter(torch.tensor(init))
        else:
            raise ValueError(f"heads must be 'projection' or 'mlp', got {heads!r}")
        if transforms:
            self.audio_transform, self.text_transform = MLPHead(projection_dim), MLPHead(projection_dim)

    # -------------------------------------------------------------- embeddings
    def embed_audio(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms (B, T) at ``sample_rate`` -> L2-normalised joint-space embeddings (B, projection_dim)."""
        return F.normalize(self.audio_projection(self.encode_clips(audio, lengths)).float(), dim=-1)

    def embed_tokens(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_encoder(text_ids, text_mask)).float(), dim=-1)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Texts -> L2-normalised joint-space embeddings (B, projection_dim)."""
        tokens = self.text_encoder.tokenize(list(texts), self.text_length)
        device = next(self.parameters()).device
        return self.embed_tokens(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))

    def _log_scale(self) -> torch.Tensor:
        return self.logit_scale_a if self.heads == "mlp" else self.logit_scale

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(clips, texts) similarity logits: exp(logit scale) * cosine similarity."""
        return self._log_scale().exp() * audio @ text.T

    def scale(self) -> torch.Tensor:
        """The similarity scale of training: exp(logit scale), clamped at 100."""
        return self._log_scale().clamp(max=MAX_LOGIT_SCALE).exp()

    # -------------------------------------------------------------- the engine's protocol
    def batch_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``audio``, the texts' tokens, their :func:`text_keys` (which texts are the same) and the
        clips' keys (which rows are of the same recording and segment)."""
        tokens = self.text_encoder.tokenize(list(batch["texts"]), self.text_length)
        clips = batch.get("clips") or [f"row:{i}" for i in range(len(batch["texts"]))]
        return {"audio": batch["audio"], "text_ids": tokens["input_ids"], "text_mask": tokens["attention_mask"],
                "text_key": text_keys(batch["texts"]), "clip_key": string_keys(clips)}

    def example_inputs(self, n: int = 1) -> dict[str, torch.Tensor]:
        tokens = self.text_encoder.tokenize(["a"] * n, self.text_length)
        device = next(self.parameters()).device
        return {"audio": self.silent_clips(n), "text_ids": tokens["input_ids"].to(device),
                "text_mask": tokens["attention_mask"].to(device),
                "text_key": torch.arange(n, device=device), "clip_key": torch.arange(n, device=device)}

    def _row_losses(self, audio: torch.Tensor, text: torch.Tensor, key: torch.Tensor, all_audio: torch.Tensor,
                    all_text: torch.Tensor, all_keys: torch.Tensor, offset: int) -> torch.Tensor:
        """(CE(audio -> texts) + CE(text -> clips)) / 2 of each local row against every column."""
        own = offset + torch.arange(len(audio), device=audio.device)
        same = (key[:, None] == all_keys[None, :]).any(-1)  # identical texts or the same clip: not negatives
        same[torch.arange(len(audio), device=audio.device), own] = False
        scale = self.scale()
        audio_to_text = (scale * audio @ all_text.T).masked_fill(same, -math.inf)
        text_to_audio = (scale * text @ all_audio.T).masked_fill(same, -math.inf)
        return (F.cross_entropy(audio_to_text, own, reduction="none")
                + F.cross_entropy(text_to_audio, own, reduction="none")) / 2

    def forward(self, audio: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                text_key: torch.Tensor, clip_key: torch.Tensor) -> dict[str, torch.Tensor]:
        a, t = self.embed_audio(audio), self.embed_tokens(text_ids, text_mask)
        keys = torch.stack([text_key, clip_key], 1)
        if self.training and _world_size() > 1:
            (all_pairs, all_keys), offset = _gather_rows(torch.cat([a, t], dim=1), keys)
            all_audio, all_text = all_pairs.split([a.shape[1], t.shape[1]], dim=1)
        else:  # one process, or validation (each process scores its own batches)
            all_audio, all_text, all_keys, offset = a, t, keys, 0
        return {"loss_sum": self._row_losses(a, t, keys, all_audio, all_text, all_keys, offset).sum()}

    @torch.no_grad()
    def validation_sums(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``valid_loss`` and in-batch retrieval R@1 both ways (``valid_audio_to_text_r1``: the
        closest text of the batch is the clip's own or identical to it; ``valid_text_to_audio_r1``).
        Each process scores its own validation batches, so both depend on the batch size:
        compare runs of one batch size; ``pengi-kit evaluate`` scores a whole test set."""
        a = self.embed_audio(inputs["audio"])
        t = self.embed_tokens(inputs["text_ids"], inputs["text_mask"])
        key = inputs["text_key"]
        keys = torch.stack([key, inputs["clip_key"]], 1)
        rows = torch.tensor(float(len(a)), dtype=torch.float64, device=a.device)
        loss = self._row_losses(a, t, keys, a, t, keys, 0).double().sum()
        similarity = a @ t.T
        audio_to_text = (key[similarity.argmax(1)] == key).double().sum()
        text_to_audio = (key[similarity.argmax(0)] == key).double().sum()
        return {"valid_loss": torch.stack([loss, rows]), "valid_audio_to_text_r1": torch.stack([audio_to_text, rows]),
                "valid_text_to_audio_r1": torch.stack([text_to_audio, rows])}

    # -------------------------------------------------------------- CLAP folders
    def export(self, out_dir: str | Path) -> Path:
        """:meth:`write_folder` at ``<out_dir>/clap`` (the trainer calls it after training)."""
        return self.write_folder(Path(out_dir) / CLAP_FOLDER)

    def write_folder(self, folder: str | Path) -> Path:
        """Write ``folder`` (replacing it), a CLAP folder as ``pengi-kit import ms-clap`` writes:
        ``clap.json``, ``audio_encoder/`` (an encoder folder), ``text_encoder/`` (a Hugging Face
        folder with its tokenizer), ``heads.safetensors`` and ``usage.toml``. Needs the recipe the
        model was built from (a trained model). Returns the folder."""
        recipe = self._recipe()
        out = Path(folder).resolve()
        audio_name, audio_table = component_table(recipe, "audio_encoder")
        text_name, text_table = component_table(recipe, "text_encoder")
        heads_sd = {k: v for k, v in self.state_dict().items() if not k.startswith(("audio_encoder.", "text_encoder."))}
        for name in ("logit_scale", "logit_scale_a", "logit_scale_t"):
            if name in heads_sd:
                heads_sd[name] = heads_sd[name].clamp(max=MAX_LOGIT_SCALE)
        with staged(out) as tmp:
            write_clap_folder(tmp, out, audio_table={"name": audio_name, **audio_table},
                              audio_sd=self.audio_encoder.state_dict(),
                              text_table={"name": text_name, **folder_arguments(text_name, text_table)},
                              write_text=self._write_text_tower,
                              heads={"kind": self.heads, "dim": self.projection_dim,
                                     "transforms": hasattr(self, "audio_transform")},
                              heads_sd=heads_sd, text_length=self.text_length, source=self._source())
        return out

    def _write_text_tower(self, folder: Path) -> None:
        """The text encoder's Hugging Face model and tokenizer, loadable by its factory's ``pretrained``."""
        model, tokenizer = getattr(self.text_encoder, "model", None), getattr(self.text_encoder, "tokenizer", None)
        if not hasattr(model, "save_pretrained") or not hasattr(tokenizer, "save_pretrained"):
            raise PengiKitError(f"the text encoder {type(self.text_encoder).__name__} keeps no Hugging Face model "
                                "and tokenizer (.model / .tokenizer with save_pretrained), so it cannot be "
                                "written into a CLAP folder")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def load_clap(folder: str | Path, device: str | torch.device = "cpu") -> ClapModel:
    """The :class:`ClapModel` of a CLAP folder (an import, or a contrastive run's export), in eval mode."""
    from safetensors.torch import load_file

    from pengi_kit.plugins import registry

    folder = Path(folder)
    info = read_clap_info(folder)
    towers = {}
    for slot in ("audio_encoder", "text_encoder"):
        table = dict(info[slot])
        towers[slot] = registry().get(slot, table.pop("name")).load()(**table)
    heads = info["heads"]
    model = ClapModel(towers["audio_encoder"], towers["text_encoder"], heads["dim"], heads["kind"],
                      text_length=info["text_length"], transforms=bool(heads.get("transforms")))
    load_strict(model, {**{k: v for k, v in model.state_dict().items() if k.split(".")[0] in towers},
                        **load_file(str(folder / HEADS_FILE))}, f"{folder / HEADS_FILE}")
    return model.to(device).eval()


def write_clap_folder(tmp: Path, out: Path, **files: Any) -> str:
    """:func:`pengi_kit.folders.write_clap_files` into ``tmp`` (staged to become ``out``), then
    check that every part builds and loads strictly; returns the usage tables. Importers and
    :meth:`ClapModel.write_folder` both write CLAP folders through here."""
    usage = write_clap_files(tmp, out, **files)
    load_clap(tmp)
    return usage


def build_clap(recipe: dict[str, Any], registry: Any | None = None) -> ClapModel:
    """The CLAP model of a resolved recipe (``task = "contrastive"``), with Pengi's projection heads."""
    cfg, pre = recipe["model"], recipe["pretrain"]
    model = ClapModel(build_component(recipe, "audio_encoder", registry),
                      build_component(recipe, "text_encoder", registry), cfg["projection_dim"], "projection",
                      pre["temperature"], pre["text_length"], cfg["projection_dropout"])
    model.set_trainable({slot: cfg[slot]["trainable"] for slot in ("audio_encoder", "text_encoder")})
    return model


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_rows(rows: torch.Tensor, keys: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    """Every process's ``rows`` (gradients flow back to their owners) and ``keys``, in rank
    order, and where this process's rows start. Processes may hold different numbers of rows
    (skipped examples): rows are padded to the largest count for the collective and cut after;
    learning the counts costs one small all-gather and one wait for it."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    world, rank = dist.get_world_size(), dist.get_rank()
    counts = [torch.zeros((), dtype=torch.long, device=rows.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor(len(rows), device=rows.device))
    sizes = [int(c) for c in counts]
    pad = max(sizes) - len(rows)
    rows_parts = all_gather(F.pad(rows, (0, 0, 0, pad)))
    key_parts = [torch.empty(max(sizes), *keys.shape[1:], dtype=keys.dtype, device=keys.device) for _ in range(world)]
    dist.all_gather(key_parts, F.pad(keys, (0, 0) * (keys.dim() - 1) + (0, pad)))
    gathered = torch.cat([part[:n] for part, n in zip(rows_parts, sizes)])
    return (gathered, torch.cat([part[:n] for part, n in zip(key_parts, sizes)])), sum(sizes[:rank])


def folder_arguments(name: str, table: dict[str, Any]) -> dict[str, Any]:
    """The arguments of text encoder ``name`` that still apply when it loads from a saved
    folder: those whose factory default is not None (``pooling``, ``suffix`` ...). The
    others, by the convention of :func:`pengi_kit.components._hf.build_hf`, describe a fresh
    architecture or a tokenizer, which the folder now holds (and which a factory refuses
    beside ``pretrained``)."""
    from pengi_kit.plugins import registry
    from pengi_kit.recipe import factory_params

    params, _ = factory_params(registry().get("text_encoder", name).load())
    return {k: v for k, v in table.items() if k in params and params[k].default is not None}
