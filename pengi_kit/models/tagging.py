"""Audio tagging, the first of the two ways pengi-kit pretrains an audio encoder
(``task = "tagging"``; docs/pretraining.md).

:class:`TaggingModel` is the audio encoder and a linear classifier head on its embedding,
trained on labels the way PANNs trains CNN14 (one label per clip: softmax cross-entropy;
``pretrain.multi_label``: sigmoid binary cross-entropy). The trainer calls ``export`` after
training: an *encoder folder* (:mod:`pengi_kit.folders`) that a Pengi recipe loads with
``[model.audio_encoder] pretrained = "<run>/encoder"``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pengi_kit.errors import PengiKitError, RecipeError
from pengi_kit.folders import cpu_state, staged, toml_table, write_json
from pengi_kit.models.base import Composite, build_component, component_table, write_encoder_folder

__all__ = ["TaggingModel", "build_tagger", "tagging_classes", "ENCODER_FOLDER"]

ENCODER_FOLDER = "encoder"  # what a tagging run exports, under its output directory
TAGGER_FILE = "tagger.json"
HEAD_FILE = "head.safetensors"


class TaggingModel(Composite):
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
        mix = batch.get("mixup")  # clips mixed in pairs (data.augment.mixup): their labels mix alike
        if mix:
            hard = target if self.multi_label else F.one_hot(target, len(self.classes)).float()
            weight = torch.tensor(mix["weight"])[:, None]
            target = weight * hard + (1 - weight) * hard[torch.tensor(mix["partner"])]
        inputs = {"audio": batch["audio"], "labels": target}
        if self.frames and "audio_lengths" in batch:  # each clip's own frames, not the batch's padding
            inputs["audio_lengths"] = batch["audio_lengths"]
        return inputs

    def example_inputs(self, n: int = 1) -> dict[str, torch.Tensor]:
        device = next(self.parameters()).device
        labels = (torch.zeros(n, len(self.classes), device=device) if self.multi_label
                  else torch.zeros(n, dtype=torch.long, device=device))
        return {"audio": self.silent_clips(n), "labels": labels}

    def logits(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, classes), float32."""
        return self.head(self.encode_clips(audio, lengths)).float()

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(1)
        return F.cross_entropy(logits, labels, reduction="none")

    def forward(self, audio: torch.Tensor, labels: torch.Tensor,
                audio_lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"loss_sum": self._losses(self.logits(audio, audio_lengths), labels).sum()}

    @torch.no_grad()
    def validation_sums(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``valid_loss``, and ``valid_accuracy`` (single-label: top-1) or ``valid_f1`` (multi-label:
        micro-averaged F1 at probability 0.5).

        Micro-F1 = 2 TP / (2 TP + FP + FN) is a ratio of sums, so adding its parts over batches
        and processes gives the exact F1 of the whole validation set; mAP, the AudioSet
        metric, ranks every clip of a class against all others and cannot be summed batch by
        batch (``pengi-kit evaluate --task linear-probe`` or ``classification`` reports it)."""
        logits, labels = self.logits(inputs["audio"], inputs.get("audio_lengths")), inputs["labels"]
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

        out = Path(folder).resolve()  # usage.toml names it absolutely
        name, table = component_table(self._recipe(), "audio_encoder")
        table.update(getattr(self.audio_encoder, "build_args", {}))  # an encoder's own sizes (a hub model's)
        with staged(out, force=True) as tmp:
            write_encoder_folder(tmp, name, table, self.audio_encoder.state_dict(), self._source())
            save_file(cpu_state(self.head.state_dict()), str(tmp / HEAD_FILE))
            write_json(tmp / TAGGER_FILE, {"classes": self.classes, "multi_label": self.multi_label,
                                           "label_separator": self.label_separator, "source": self._source()})
            usage = toml_table("model.audio_encoder", {"name": name, **table, "pretrained": str(out)})
            (tmp / "usage.toml").write_text(usage, encoding="utf-8")
        return out


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


def build_tagger(recipe: dict[str, Any], registry: Any | None = None) -> TaggingModel:
    """The tagger of a resolved recipe (``task = "tagging"``). Empty ``pretrain.classes`` take every
    label of ``data.train`` (:func:`tagging_classes`), recorded in ``recipe["pretrain"]["classes"]``
    in place: the checkpoints the trainer writes then rebuild the same head without the data."""
    pre = recipe["pretrain"]
    pre["classes"] = tagging_classes(recipe)
    model = TaggingModel(build_component(recipe, "audio_encoder", registry), pre["classes"], pre["multi_label"],
                         pre["label_separator"])
    model.set_trainable({"audio_encoder": recipe["model"]["audio_encoder"]["trainable"]})
    return model
