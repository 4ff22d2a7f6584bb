"""Encoder pretraining in the one engine: a recipe's ``task = "tagging" | "contrastive"``.

Pengi starts from an audio encoder that already knows sounds. These two models give
one, trained by the same :class:`~pengi_kit.engine.trainer.Trainer` as Pengi (same
checkpoints, resume, bad-input policy and logs; one process or many):

- :class:`TaggingModel` (``task = "tagging"``): the audio encoder and a linear classifier
  head on its embedding, trained on labels the way PANNs trains CNN14 (one label per
  clip: softmax cross-entropy; ``pretrain.multi_label``: sigmoid binary cross-entropy).
  Its export is an *encoder folder* that a Pengi recipe loads with
  ``[model.audio_encoder] pretrained = "<run>/encoder"``.
- :class:`ContrastiveModel` (``task = "contrastive"``): an audio and a text encoder with
  Pengi / Microsoft CLAP projections into a joint space, a learned temperature and the
  symmetric InfoNCE loss over the global batch (every process's clips and texts), the
  way LAION-CLAP and Microsoft CLAP train. Its export is a *CLAP folder* as
  ``pengi-kit import laion-clap|ms-clap`` writes (:mod:`pengi_kit.convert.clap`): it
  loads with :func:`pengi_kit.convert.clap.load_clap` and ``pengi_kit.load``, scores with
  ``pengi-kit evaluate``, and its towers plug into a Pengi recipe by path (``usage.toml``).

The trainer calls ``export(output_dir)`` after the final checkpoint; ``pengi-kit export``
does the same for any checkpoint of a run. See docs/pretraining.md.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.errors import PengiKitError, RecipeError
from pengi_kit.composite import Composite, Projection

__all__ = ["ContrastiveModel", "TaggingModel", "build_pretraining_model", "ENCODER_FOLDER", "CLAP_FOLDER"]

ENCODER_FOLDER = "encoder"  # what a tagging run exports, under its output directory
CLAP_FOLDER = "clap"  # what a contrastive run exports
TAGGER_FILE = "tagger.json"
HEAD_FILE = "head.safetensors"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: a temperature of at least 0.01


class _Pretraining(Composite):
    """What both pretraining models share: the audio contract, the recipe, frozen slots."""

    def __init__(self, audio_encoder: nn.Module) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder
        self.sample_rate = int(audio_encoder.sample_rate)
        self.clip_seconds = audio_encoder.clip_seconds
        self.recipe: dict[str, Any] | None = None
        self.frozen: list[str] = []

    def _recipe(self) -> dict[str, Any]:
        if self.recipe is None:
            raise PengiKitError("this model was not built from a recipe (pengi_kit.model.build_model), so it "
                                "cannot name its components in an exported folder")
        return self.recipe

    def _source(self) -> dict[str, Any]:
        recipe = self._recipe()
        return {"format": "pengi-kit", "variant": recipe["task"], "recipe": recipe["name"],
                "output_dir": recipe["train"]["output_dir"]}


# ---------------------------------------------------------------- tagging

class TaggingModel(_Pretraining):
    """Audio encoder + linear classifier head on its embedding (B, embed_dim) -> class logits.

    ``classes`` fixes the head's order. Single-label (softmax cross-entropy, PANNs'
    fine-tuning recipe): an example's label is its ``text``. Multi-label (sigmoid binary
    cross-entropy averaged over classes, PANNs' AudioSet loss): its ``labels`` where the
    dataset gives them (the synthetic corpus), else its text split at ``label_separator``.
    ``loss_sum`` sums one loss per clip; ``loss_units`` counts clips.
    """

    def __init__(self, audio_encoder: nn.Module, classes: list[str], multi_label: bool = False,
                 label_separator: str = ",") -> None:
        super().__init__(audio_encoder)
        if not classes:
            raise ValueError("a tagger needs at least one class")
        self.classes, self.multi_label, self.label_separator = list(classes), multi_label, label_separator
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.head = nn.Linear(audio_encoder.embed_dim, len(self.classes))

    def labels_of(self, text: str, labels: list[str] | None = None) -> list[str]:
        """The labels of one example (see the class docstring)."""
        if not self.multi_label:
            return [text.strip()]
        if labels is not None:
            return list(labels)
        return [part.strip() for part in text.split(self.label_separator) if part.strip()]

    def batch_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``audio`` and ``labels``: class indices (B,), or a 0/1 matrix (B, classes) when multi-label.
        A label outside the classes stops with one line naming it."""
        given = batch.get("labels") or [None] * len(batch["texts"])
        rows = [self.labels_of(text, tags) for text, tags in zip(batch["texts"], given)]
        for row in rows:
            unknown = [label for label in row if label not in self.index]
            if unknown:
                raise PengiKitError(f"label {unknown[0]!r} is not among the tagger's {len(self.classes)} classes "
                                    f"({_short(self.classes)}); add it to pretrain.classes, or leave "
                                    "pretrain.classes = [] to take every label of data.train")
        if self.multi_label:
            target = torch.zeros(len(rows), len(self.classes))
            for i, row in enumerate(rows):
                target[i, [self.index[label] for label in row]] = 1.0
        else:
            target = torch.tensor([self.index[row[0]] for row in rows], dtype=torch.long)
        return {"audio": batch["audio"], "labels": target}

    @staticmethod
    def loss_units(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Clips: one loss term each (on the inputs' device, where the trainer sums it over processes)."""
        return torch.tensor(len(inputs["audio"]), device=inputs["audio"].device)

    def example_inputs(self, n: int = 1) -> dict[str, torch.Tensor]:
        device = next(self.parameters()).device
        labels = (torch.zeros(n, len(self.classes), device=device) if self.multi_label
                  else torch.zeros(n, dtype=torch.long, device=device))
        return {"audio": self.silent_clips(n), "labels": labels}

    def logits(self, audio: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes), float32."""
        return self.head(self.audio_encoder(audio)).float()

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(1)
        return F.cross_entropy(logits, labels, reduction="none")

    def forward(self, audio: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_sum": self._losses(self.logits(audio), labels).sum()}

    @torch.no_grad()
    def validation_sums(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``valid_loss``, and ``valid_accuracy`` (single-label: top-1) or ``valid_f1`` (multi-label:
        micro-averaged F1 at probability 0.5).

        Micro-F1 = 2 TP / (2 TP + FP + FN) is a ratio of sums, so adding its parts over batches
        and processes gives the exact F1 of the whole validation set; mAP, the AudioSet
        metric, ranks every clip of a class against all others and cannot be summed batch by
        batch (``pengi-kit evaluate --task linear-probe`` or ``classification`` reports it)."""
        logits, labels = self.logits(inputs["audio"]), inputs["labels"]
        clips = torch.tensor(float(len(logits)), dtype=torch.float64, device=logits.device)
        sums = {"valid_loss": torch.stack([self._losses(logits, labels).double().sum(), clips])}
        if not self.multi_label:
            correct = (logits.argmax(1) == labels).double().sum()
            return {**sums, "valid_accuracy": torch.stack([correct, clips])}
        predicted, truth = logits > 0, labels > 0.5
        tp = (predicted & truth).double().sum()
        errors = (predicted ^ truth).double().sum()  # FP + FN
        return {**sums, "valid_f1": torch.stack([2 * tp, 2 * tp + errors])}

    def export(self, out_dir: str | Path) -> Path:
        """:meth:`write_folder` at ``<out_dir>/encoder`` (the trainer calls it after training)."""
        return self.write_folder(Path(out_dir) / ENCODER_FOLDER)

    def write_folder(self, folder: str | Path) -> Path:
        """Write ``folder`` (replacing it): the trained audio encoder as an encoder folder
        (``component.json`` + ``model.safetensors``, as ``pengi-kit import panns`` writes),
        the classifier (``tagger.json`` with the classes, ``head.safetensors``) and
        ``usage.toml``, the ``[model.audio_encoder]`` table that loads it. Returns the folder."""
        from safetensors.torch import save_file

        from pengi_kit.convert._common import staged, toml_table, write_json

        out = Path(folder).resolve()  # usage.toml names it absolutely
        name, table = component_table(self._recipe(), "audio_encoder")
        with staged(out, force=True) as tmp:
            write_encoder_folder(tmp, name, table, self.audio_encoder, self._source())
            save_file(_cpu(self.head.state_dict()), str(tmp / HEAD_FILE))
            write_json(tmp / TAGGER_FILE, {"classes": self.classes, "multi_label": self.multi_label,
                                           "label_separator": self.label_separator, "source": self._source()})
            usage = toml_table("model.audio_encoder", {"name": name, **table, "pretrained": str(out)})
            (tmp / "usage.toml").write_text(usage, encoding="utf-8")
        return out


# ---------------------------------------------------------------- contrastive (CLAP)

def text_keys(texts: list[str]) -> torch.Tensor:
    """An int64 key per text, equal for texts that are the same caption (case and spacing
    aside) on every process (Python's ``hash`` of a string differs between processes)."""
    digests = (hashlib.blake2b(" ".join(t.lower().split()).encode("utf-8"), digest_size=8).digest() for t in texts)
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests], dtype=torch.long)


class ContrastiveModel(_Pretraining):
    """CLAP: audio and text encoders, each followed by a Pengi/Microsoft-CLAP
    :class:`~pengi_kit.composite.Projection` into a ``projection_dim`` joint space, L2-normalised;
    similarities are scaled by a learned ``exp(logit_scale)``, initialised to 1/``temperature``
    and clamped at 100 as CLIP does.

    The loss is the symmetric InfoNCE over the global batch: in training on several
    processes, every process's audio and text embeddings are gathered with gradients
    (``torch.distributed.nn.functional.all_gather``), and each process's ``loss_sum`` adds,
    for each of its own rows, (CE(audio -> every text) + CE(text -> every clip)) / 2;
    ``loss_units`` counts its rows. With ``train.grad_accum`` > 1 the negatives are those of
    one micro-batch on every process.

    Identical texts (the same caption for two clips, or a class text such as "this is a
    sound of rain" for many) are not negatives of each other's clips: a clip is never
    pushed away from a text equal to its own (case and spacing aside). Those logits are
    masked out of both directions, so the loss can still reach zero. (Two rows of the same
    clip with different captions are not recognised: as in LAION-CLAP, they count as
    negatives.)
    """

    def __init__(self, audio_encoder: nn.Module, text_encoder: nn.Module, projection_dim: int = 1024,
                 temperature: float = 0.07, text_length: int = 77, projection_dropout: float = 0.5) -> None:
        super().__init__(audio_encoder)
        self.text_encoder, self.text_length, self.projection_dim = text_encoder, text_length, projection_dim
        self.audio_projection = Projection(audio_encoder.embed_dim, projection_dim, projection_dropout)
        self.text_projection = Projection(text_encoder.embed_dim, projection_dim, projection_dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    # -------------------------------------------------------------- embeddings
    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, T) -> L2-normalised joint-space embeddings (B, projection_dim)."""
        return F.normalize(self.audio_projection(self.audio_encoder(audio)).float(), dim=-1)

    def embed_tokens(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_encoder(text_ids, text_mask)).float(), dim=-1)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Texts -> L2-normalised joint-space embeddings (B, projection_dim), as
        :meth:`pengi_kit.convert.clap.ClapModel.embed_text`."""
        tokens = self.text_encoder.tokenize(list(texts), self.text_length)
        device = next(self.parameters()).device
        return self.embed_tokens(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    # -------------------------------------------------------------- the engine's protocol
    def batch_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``audio``, the texts' tokens and their :func:`text_keys` (which texts are the same)."""
        tokens = self.text_encoder.tokenize(list(batch["texts"]), self.text_length)
        return {"audio": batch["audio"], "text_ids": tokens["input_ids"], "text_mask": tokens["attention_mask"],
                "text_key": text_keys(batch["texts"])}

    @staticmethod
    def loss_units(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows (clip-text pairs) of this process: one loss term each."""
        return torch.tensor(len(inputs["audio"]), device=inputs["audio"].device)

    def example_inputs(self, n: int = 1) -> dict[str, torch.Tensor]:
        tokens = self.text_encoder.tokenize(["a"] * n, self.text_length)
        device = next(self.parameters()).device
        return {"audio": self.silent_clips(n), "text_ids": tokens["input_ids"].to(device),
                "text_mask": tokens["attention_mask"].to(device),
                "text_key": torch.arange(n, device=device)}

    def _row_losses(self, audio: torch.Tensor, text: torch.Tensor, key: torch.Tensor, all_audio: torch.Tensor,
                    all_text: torch.Tensor, all_keys: torch.Tensor, offset: int) -> torch.Tensor:
        """(CE(audio -> texts) + CE(text -> clips)) / 2 of each local row against every column."""
        own = offset + torch.arange(len(audio), device=audio.device)
        same = key[:, None] == all_keys[None, :]  # identical texts: not negatives
        same[torch.arange(len(audio), device=audio.device), own] = False
        scale = self.scale()
        audio_to_text = (scale * audio @ all_text.T).masked_fill(same, -math.inf)
        text_to_audio = (scale * text @ all_audio.T).masked_fill(same, -math.inf)
        return (F.cross_entropy(audio_to_text, own, reduction="none")
                + F.cross_entropy(text_to_audio, own, reduction="none")) / 2

    def forward(self, audio: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                text_key: torch.Tensor) -> dict[str, torch.Tensor]:
        a, t = self.embed_audio(audio), self.embed_tokens(text_ids, text_mask)
        if self.training and _world_size() > 1:
            (all_pairs, all_keys), offset = _gather_rows(torch.cat([a, t], dim=1), text_key)
            all_audio, all_text = all_pairs.split([a.shape[1], t.shape[1]], dim=1)
        else:  # one process, or validation (each process scores its own batches)
            all_audio, all_text, all_keys, offset = a, t, text_key, 0
        return {"loss_sum": self._row_losses(a, t, text_key, all_audio, all_text, all_keys, offset).sum()}

    @torch.no_grad()
    def validation_sums(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``valid_loss`` and in-batch retrieval R@1 both ways (``valid_audio_to_text_r1``: the
        closest text of the batch is the clip's own or identical to it; ``valid_text_to_audio_r1``).
        Each process scores its own validation batches, so both depend on the batch size:
        compare runs of one batch size; ``pengi-kit evaluate`` scores a whole test set."""
        a = self.embed_audio(inputs["audio"])
        t = self.embed_tokens(inputs["text_ids"], inputs["text_mask"])
        key = inputs["text_key"]
        rows = torch.tensor(float(len(a)), dtype=torch.float64, device=a.device)
        loss = self._row_losses(a, t, key, a, t, key, 0).double().sum()
        similarity = a @ t.T
        audio_to_text = (key[similarity.argmax(1)] == key).double().sum()
        text_to_audio = (key[similarity.argmax(0)] == key).double().sum()
        return {"valid_loss": torch.stack([loss, rows]), "valid_audio_to_text_r1": torch.stack([audio_to_text, rows]),
                "valid_text_to_audio_r1": torch.stack([text_to_audio, rows])}

    def export(self, out_dir: str | Path) -> Path:
        """:meth:`write_folder` at ``<out_dir>/clap`` (the trainer calls it after training)."""
        return self.write_folder(Path(out_dir) / CLAP_FOLDER)

    def write_folder(self, folder: str | Path) -> Path:
        """Write ``folder`` (replacing it), a CLAP folder as ``pengi-kit import ms-clap`` writes
        (:mod:`pengi_kit.convert.clap`): ``clap.json``, ``audio_encoder/`` (an encoder folder),
        ``text_encoder/`` (a Hugging Face folder with its tokenizer), ``heads.safetensors``
        (the projections in Pengi's layout and ``logit_scale``) and ``usage.toml``. Returns it."""
        from pengi_kit.convert._common import staged
        from pengi_kit.convert.clap import write_clap_folder

        recipe = self._recipe()
        out = Path(folder).resolve()
        audio_name, audio_table = component_table(recipe, "audio_encoder")
        text_name, text_table = component_table(recipe, "text_encoder")
        heads_sd = {**{f"audio_projection.{k}": v for k, v in self.audio_projection.state_dict().items()},
                    **{f"text_projection.{k}": v for k, v in self.text_projection.state_dict().items()},
                    "logit_scale": self.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE)}
        with staged(out, force=True) as tmp:
            write_clap_folder(tmp, out, audio_table={"name": audio_name, **audio_table},
                              audio_sd=_cpu(self.audio_encoder.state_dict()),
                              text_table={"name": text_name, **folder_arguments(text_name, text_table)},
                              write_text=self._write_text_tower, heads={"kind": "projection",
                                                                        "dim": self.audio_projection.linear2.out_features},
                              heads_sd=_cpu(heads_sd),
                              text_length=self.text_length, source=self._source())
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
    key_parts = [torch.empty(max(sizes), dtype=keys.dtype, device=keys.device) for _ in range(world)]
    dist.all_gather(key_parts, F.pad(keys, (0, pad)))
    gathered = torch.cat([part[:n] for part, n in zip(rows_parts, sizes)])
    return (gathered, torch.cat([part[:n] for part, n in zip(key_parts, sizes)])), sum(sizes[:rank])


# ---------------------------------------------------------------- building and exporting

def component_table(recipe: dict[str, Any], slot: str) -> tuple[str, dict[str, Any]]:
    """A recipe slot's component name and build arguments, without ``trainable`` and the
    weight source (an exported folder replaces it)."""
    table = dict(recipe["model"][slot])
    name = table.pop("name")
    for key in ("trainable", "pretrained"):
        table.pop(key, None)
    return name, table


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


def write_encoder_folder(folder: Path, name: str, table: dict[str, Any], encoder: nn.Module,
                         source: dict[str, Any]) -> None:
    """An encoder folder of ``encoder``'s weights (:func:`~pengi_kit.convert._common.save_encoder_folder`),
    checked by building component ``name`` from ``table`` with ``pretrained`` = the folder."""
    from pengi_kit.convert._common import save_encoder_folder
    from pengi_kit.plugins import registry

    save_encoder_folder(folder, name, table, _cpu(encoder.state_dict()), source)
    registry().get("audio_encoder", name).load()(**table, pretrained=str(folder))


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n})" if len(items) > n else "")


def _source_labels(recipe: dict[str, Any], split: str, multi_label: bool,
                   split_text: Callable[[str], list[str]]) -> dict[str, str]:
    """Every label of ``data.<split>`` -> where it was first seen, read without decoding audio."""
    from pengi_kit.data.build import sources
    from pengi_kit.data.manifest import read_manifest
    from pengi_kit.data.shards import is_shard_source
    from pengi_kit.data.synthetic import KINDS

    found: dict[str, str] = {}
    for entry in sources(recipe, split):
        name = entry["manifest"]
        if name == "synthetic":
            for kind in KINDS:  # the primary kind, or (multi-label) every kind, ranges over all of them
                found.setdefault(kind, "the synthetic corpus")
        elif is_shard_source(name):
            raise RecipeError(f"pretrain.classes: data.{split} streams shards ('{name}'), whose labels are not read "
                              "before training; list the classes in pretrain.classes")
        else:
            examples, _ = read_manifest(Path(name), on_error="skip", task=entry.get("task"),
                                        templates=entry.get("templates"), prompt=entry.get("prompt", ""))
            for ex in examples:
                for label in (split_text(ex.text) if multi_label else [ex.text.strip()]):
                    found.setdefault(label, f"{ex.source}:{ex.line}")
    return found


def tagging_classes(recipe: dict[str, Any]) -> list[str]:
    """``pretrain.classes``, or every label of ``data.train``, sorted; a validation label outside
    them is a one-line RecipeError. Labels are the examples' texts (split at
    ``pretrain.label_separator`` when multi-label)."""
    pre = recipe["pretrain"]
    if pre["classes"]:
        return list(pre["classes"])
    sep = pre["label_separator"]

    def split_text(text: str) -> list[str]:
        return [part.strip() for part in text.split(sep) if part.strip()]

    classes = sorted(_source_labels(recipe, "train", pre["multi_label"], split_text))
    if not classes:
        raise RecipeError("pretrain.classes: data.train has no labelled example; give manifests whose texts are "
                          "the labels (`pengi-kit data prepare` writes them for classification corpora)")
    unseen = {label: where for label, where in _source_labels(recipe, "valid", pre["multi_label"], split_text).items()
              if label not in classes}
    if unseen:
        label, where = next(iter(unseen.items()))
        raise RecipeError(f"data.valid: label {label!r} ({where}) is not among the {len(classes)} labels of data.train"
                          f"{f' (and {len(unseen) - 1} more)' if len(unseen) > 1 else ''}; list every class in "
                          "pretrain.classes, or drop those validation rows")
    return classes


def build_pretraining_model(recipe: dict[str, Any], registry: Any | None = None) -> TaggingModel | ContrastiveModel:
    """The model of a resolved recipe with ``task = "tagging"`` or ``"contrastive"``.

    A tagger whose ``pretrain.classes`` is empty takes every label of ``data.train``
    (:func:`tagging_classes`) and records them in ``recipe["pretrain"]["classes"]``, in
    place: the checkpoints the trainer writes then rebuild the same head without the data.
    """
    if registry is None:
        from pengi_kit.plugins import registry as get_registry
        registry = get_registry()
    from pengi_kit.recipe import COMPONENT_SLOTS, TASK_SLOTS

    task, cfg, pre = recipe["task"], recipe["model"], recipe["pretrain"]

    def build(slot: str) -> nn.Module:
        table = dict(cfg[slot])
        name = table.pop("name")
        table.pop("trainable")
        return registry.get(COMPONENT_SLOTS[slot][0], name).load()(**table)

    if task == "tagging":
        pre["classes"] = tagging_classes(recipe)
        model: TaggingModel | ContrastiveModel = TaggingModel(build("audio_encoder"), pre["classes"],
                                                              pre["multi_label"], pre["label_separator"])
    elif task == "contrastive":
        model = ContrastiveModel(build("audio_encoder"), build("text_encoder"), cfg["projection_dim"],
                                 pre["temperature"], pre["text_length"], cfg["projection_dropout"])
    else:
        raise RecipeError(f"task {task!r} is not a pretraining task (use 'tagging' or 'contrastive')")
    model.set_trainable({slot: cfg[slot]["trainable"] for slot in TASK_SLOTS[task]})
    model.recipe = recipe
    return model
