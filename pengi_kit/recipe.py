"""TOML recipes: schema, ``extends``, ``-s key=value`` overrides and validation.

A recipe resolves to a plain dict in which every section and every key is present;
component tables (``[model.audio_encoder]`` ...) carry ``name``, ``trainable`` and the
arguments of the component's factory, checked against its signature before any weight
is loaded.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pengi_kit.decoding import Decoding, default_of
from pengi_kit.errors import PengiKitError, RecipeError


@dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    range: str = ""  # allowed values, e.g. ">= 1", "> 0", "[0, 1)"; arrays: each item, with length given

    def check(self, where: str, value: Any) -> None:
        """Raise a one-line RecipeError naming ``where`` and the allowed values when ``value`` is outside them."""
        if self.choices and value not in self.choices:
            raise RecipeError(f"{where}: {value!r} is not one of {', '.join(map(repr, self.choices))}")
        if not self.range:
            return
        items = value if isinstance(value, list) else [value]
        size = len(self.default) if isinstance(self.default, list) else None
        if size is not None and len(items) != size:
            raise RecipeError(f"{where}: expected {size} numbers, each {self.range}; got {value!r}")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not _in_range(item, self.range):
                each = "each " if size else ""
                raise RecipeError(f"{where}: must be {each}{self.range}, got {value!r}")


def _in_range(value: float, spec: str) -> bool:
    """``spec`` is ">= a", "> a" or an interval "[a, b)", "(a, b]" ..."""
    if spec[0] in "<>":
        op, bound = spec.split()
        return {">=": value >= float(bound), ">": value > float(bound)}[op]
    low, high = (float(x) for x in spec[1:-1].split(","))
    return ((low <= value) if spec[0] == "[" else (low < value)) and \
        ((value <= high) if spec[-1] == "]" else (value < high))


TASKS = ("pengi", "tagging", "contrastive")
# the component slots a pretraining task builds (all required); "pengi" builds COMPONENT_SLOTS
TASK_SLOTS = {"tagging": ("audio_encoder",), "contrastive": ("audio_encoder", "text_encoder")}

COMPONENT_SLOTS = {
    # slot: (kind, required, trainable by default, arguments the model builder supplies)
    "audio_encoder": ("audio_encoder", True, True, ()),
    "text_encoder": ("text_encoder", False, False, ()),
    "audio_mapper": ("mapper", True, True, ("in_dim", "out_dim", "sequence")),
    "text_mapper": ("mapper", True, True, ("in_dim", "out_dim", "sequence")),
    "lm": ("causal_lm", True, False, ()),
}
# Slots a recipe may switch off with name = "none". Without a text mapper the model has
# no prompt branch (a plain captioner such as Microsoft's CLAPCap); as that slot is
# required, the resolved recipe keeps it as {name = "none"} so that it round-trips.
SWITCHABLE_SLOTS = ("text_encoder", "text_mapper")


def slot_enabled(model: dict[str, Any], slot: str) -> bool:
    """Whether the resolved ``[model]`` table builds a component for ``slot``."""
    return slot in model and model[slot].get("name") != "none"


def _hint_types(hint: Any) -> tuple[type, ...] | None:
    """Plain runtime types from an annotation such as ``int``, ``str | None``; None if not simple."""
    if hint is inspect.Parameter.empty or hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_hint_types(a) for a in typing.get_args(hint) if a is not type(None)]
        if any(p is None for p in parts):
            return None
        return tuple(t for p in parts for t in p)  # type: ignore[union-attr]
    if origin in (list, tuple, typing.Sequence):
        return (list,)
    if origin is dict:
        return (dict,)
    return (hint,) if isinstance(hint, type) else None


def _decoding_fields() -> dict[str, Field]:
    """``[generate]`` is :class:`~pengi_kit.decoding.Decoding`: a key per field, with the field's type,
    default, help and choices. A field whose default is None (``seed``, ``max_new_tokens``) is left
    out of a resolved recipe until it is set: TOML has no null."""
    hints = typing.get_type_hints(Decoding)
    return {f.name: Field(_hint_types(hints[f.name]), default_of(f), f.metadata["help"], f.metadata["choices"])
            for f in dataclasses.fields(Decoding)}


SCHEMA: dict[str, dict[str, Field]] = {
    "": {
        "name": Field(str, "", "Run name; the output directory defaults to runs/<name>."),
        "seed": Field(int, 0, "Seed for weights, data order, crops and sampling."),
        "extends": Field(str, "", "A recipe this one starts from (name in the same folder or a path)."),
        "task": Field(str, "pengi", "What to train: 'pengi' (audio + prompt -> text), or an audio encoder to "
                      "pretrain: 'tagging' (a classifier head on labels) or 'contrastive' (CLAP: audio and text "
                      "encoders in a joint space). See docs/pretraining.md.", TASKS),
    },
    "model": {
        "layout": Field(str, "prefix", "How audio and text reach the LM: 'prefix' (Pengi: audio prefix, prompt prefix, "
                        "answer) or 'chat' (conversations in the LM's chat template, each clip's audio tokens where "
                        "its <audio> stands, the loss on the assistant turns; no text encoder or text mapper). See "
                        "docs/training.md, 'Conversations'.", ("prefix", "chat")),
        "projection_dim": Field(int, 1024, "Width of the shared audio/text projection space (d_proj).", range=">= 1"),
        "normalize": Field(bool, True, "L2-normalise projected embeddings before the mappers."),
        "projection_dropout": Field(float, 0.5, "Dropout inside the audio and text projections (Pengi: 0.5).",
                                    range="[0, 1)"),
        "prompt_length": Field(int, 40, "Prompt tokens given to the text encoder (or the sequence mapper).",
                               range=">= 1"),
        "target_length": Field(int, 77, "Maximum target tokens, end-of-text included.", range=">= 2"),
    },
    "data": {
        "train": Field((str, list), "synthetic",
                       "Training data: a manifest (JSONL/CSV), a shard pattern or folder, 'synthetic' (the demo "
                       "corpus), or a list of tables {manifest = ..., weight = 1.0, task = ..., templates = {...}} "
                       "mixed by weight; prompt = \"...\" in a table is the prompt of its rows that have none."),
        "valid": Field((str, list), "synthetic", "Validation data, as data.train (weights ignored), or '' for none."),
        "synthetic_train_size": Field(int, 4000, "Clips in the synthetic training split.", range=">= 1"),
        "synthetic_valid_size": Field(int, 400, "Clips in the synthetic validation split.", range=">= 1"),
        "train_crop": Field(str, "random", "How training clips longer than the encoder's clip are cut.",
                            ("random", "start", "centre")),
        "eval_crop": Field(str, "start", "How evaluation and inference clips are cut.", ("start", "centre")),
        "on_error": Field(str, "skip", "A bad clip or manifest line: 'skip' (reported) or 'fail'.", ("skip", "fail")),
        "num_workers": Field(int, 0, "DataLoader worker processes (results are the same for any number).",
                             range=">= 0"),
        "bucket_batches": Field(int, 50, "Batches per pool sorted by target-text length, in steps of 16 characters "
                                "(less padding; task = 'pengi' only); 0: off.",
                                range=">= 0"),
        "max_seconds": Field(float, 3600.0, "A clip or segment longer than this is bad input (reported).", range="> 0"),
        "augment": Field(dict, {}, "Augmentation of the training clips, drawn afresh each epoch: the table "
                         "[data.augment] (speed, pitch_semitones, shift, reverb, noise, snr_db, gain_db, mixup ...; "
                         "see docs/data.md)."),
    },
    "optim": {
        "name": Field(str, "adamw", "Optimiser.", ("adam", "adamw")),
        "lr": Field(float, 1e-4, "Peak learning rate.", range="> 0"),
        "weight_decay": Field(float, 0.0, "Decoupled weight decay (adamw) or L2 (adam), on weight matrices: "
                              "biases, norms, embeddings and learned positions and prefix constants are spared.",
                              range=">= 0"),
        "decay_all": Field(bool, False, "Apply weight_decay to every trainable parameter, biases, norms and "
                           "embeddings included."),
        "betas": Field(list, [0.9, 0.999], "Adam betas.", range="[0, 1)"),
        "warmup_steps": Field(int, 2000, "Linear warm-up steps.", range=">= 0"),
        "schedule": Field(str, "linear", "After warm-up: linear decay to 0, cosine, or constant.",
                          ("linear", "cosine", "constant")),
        "grad_clip": Field(float, 1.0, "Clip the global gradient norm to this; 0 disables.", range=">= 0"),
    },
    "train": {
        "batch_size": Field(int, 32, "Clips per optimiser step (before gradient accumulation).", range=">= 1"),
        "batch_seconds": Field(float, 0.0, "Batches by duration instead: at most this many seconds of padded audio "
                               "per batch and process (its rows times its longest row), rows of similar duration "
                               "together; 0: batch_size rows. For encoders that take clips of any length; see "
                               "docs/training.md, 'Batches by duration'.", range=">= 0"),
        "epochs": Field(int, 1, "Passes over the training data (ignored when max_steps > 0).", range=">= 1"),
        "pack": Field(bool, False, "The chat layout: pack the rows of a batch into as few sequences as hold them "
                      "(none longer than its longest row), each row attending only to itself: the same loss with less "
                      "padding. Checked against the LM when the model is built; see docs/training.md."),
        "max_steps": Field(int, 0, "Optimiser steps to run; 0 means epochs decide.", range=">= 0"),
        "grad_accum": Field(int, 1, "Micro-batches accumulated per optimiser step.", range=">= 1"),
        "precision": Field(str, "fp32", "Autocast precision.", ("fp32", "bf16", "fp16")),
        "log_every": Field(int, 20, "Steps between metric log lines.", range=">= 1"),
        "eval_every": Field(int, 0, "Steps between validations; 0 means at the end of each epoch.", range=">= 0"),
        "save_every": Field(int, 0, "Steps between checkpoints; 0 means at the end of each epoch.", range=">= 0"),
        "keep_last": Field(int, 2, "Step checkpoints kept (the newest ones).", range=">= 1"),
        "max_nonfinite_steps": Field(int, 20, "Stop (with a checkpoint) after this many non-finite steps "
                                     "in a row.", range=">= 1"),
        "save_frozen": Field(bool, False, "Also copy frozen pretrained components into checkpoints."),
        "encoder_cache": Field(str, "", "A folder where a frozen audio encoder's outputs are kept, one file per "
                               "clip (keyed by its samples and the encoder's weights), so that later epochs and "
                               "validations do not run it again; '' for none. Not with [data.augment]."),
        "output_dir": Field(str, "", "Where checkpoints and logs go; default runs/<name>."),
        "strategy": Field(str, "ddp", "How several processes share the model: 'ddp' replicates it; 'fsdp' shards "
                          "the trainable parameters, gradients and optimiser state (FSDP2), for LMs that do not fit "
                          "beside their optimiser state. One process: no difference.", ("ddp", "fsdp")),
        "compile": Field(bool, False, "Wrap the model with torch.compile (after DDP/FSDP wrapping)."),
        "peak_flops": Field(float, 0.0, "Peak TFLOP/s of one GPU, for the MFU in the log; 0 looks it up in a "
                            "table of known GPUs.", range=">= 0"),
        "activation_checkpointing": Field(bool, False, "Recompute activations in the backward pass of trainable "
                                          "components that support it (Hugging Face LM and text encoder)."),
        "best_metric": Field(str, "valid_loss", "Validation metric whose best value is kept in <output_dir>/best; "
                             "'' disables."),
        "best_mode": Field(str, "min", "Whether a lower or a higher best_metric is better.", ("min", "max")),
        "export": Field(str, "best", "Pretraining: the weights of the folder exported after training "
                        "(<output_dir>/encoder or /clap): the best validation's (best_metric) or the last step's; "
                        "without a best checkpoint, the last step's.", ("best", "last")),
    },
    "pretrain": {
        "classes": Field(list, [], "Tagging: the class names, in the head's order; [] means every label found "
                         "in data.train, sorted."),
        "multi_label": Field(bool, False, "Tagging: a clip may have several labels (sigmoid and binary "
                             "cross-entropy) instead of one (softmax and cross-entropy)."),
        "label_separator": Field(str, ",", "Tagging, multi_label: what separates the labels in a text "
                                 "('dog, rain')."),
        "temperature": Field(float, 0.07, "Contrastive: the initial softmax temperature (learned).", range="> 0"),
        "text_length": Field(int, 77, "Contrastive: text tokens given to the text encoder.", range=">= 1"),
    },
    "generate": _decoding_fields(),
}
SECTIONS = [s for s in SCHEMA if s] + ["model"]


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(options))}"


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {list: "array", dict: "table", str: "string", bool: "boolean", int: "integer",
            float: "number"}.get(t, getattr(t, "__name__", str(t)))


def _check_type(where: str, value: Any, expected: Any) -> Any:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed)
    if not ok:
        raise RecipeError(f"{where}: expected {_type_name(expected)}, got {_type_name(type(value))} {value!r}")
    return value


# ---------------------------------------------------------------- loading and merging

SHIPPED = Path(__file__).parent / "recipes"  # package data; the repository's recipes/ is the source


def shipped_recipes() -> dict[str, Path]:
    """Name -> file of every recipe that ships with pengi-kit (``pengi_base``, ``ablations/prefix_10``,
    ``eval/demo`` ...), usable by name from any directory."""
    return {p.relative_to(SHIPPED).with_suffix("").as_posix(): p for p in sorted(SHIPPED.rglob("*.toml"))}


def _find(ref: str, base: Path | None) -> Path:
    """The file a recipe reference names. A path (ending in ``.toml``, or starting with ``.``, ``/``
    or ``~``) is relative to the including recipe's folder (``base``) or the current directory. A
    name (``pengi_base``, ``ablations/prefix_10``) is a file of that name there or in ``recipes/``,
    or a shipped recipe; a local file and a shipped recipe of one name that differ are an error."""
    path = Path(ref).expanduser()
    file = path if path.suffix else path.with_suffix(".toml")
    local = [file] if file.is_absolute() else [*([base / file] if base is not None else []), file,
                                               Path("recipes") / file]
    found = next((c for c in local if c.is_file()), None)
    if path.suffix == ".toml" or ref.startswith((".", "/", "~")):
        if found is None:
            raise RecipeError(f"recipe file '{ref}' not found (looked for {', '.join(str(c) for c in local)})")
        return found
    shipped = shipped_recipes().get(path.as_posix())
    if found is not None and shipped is not None and found.read_bytes() != shipped.read_bytes():
        raise RecipeError(f"recipe '{ref}' is ambiguous: {found} and the shipped recipe {shipped} differ; name the "
                          f"file by its path (./{file}) or rename it")
    if found is None and shipped is None:
        close = difflib.get_close_matches(path.as_posix(), list(shipped_recipes()), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RecipeError(f"recipe '{ref}' not found (looked for {', '.join(str(c) for c in local)} and the shipped "
                          f"recipes); {hint}`pengi-kit recipes` lists the shipped ones, or give a path to a .toml file")
    return found or shipped


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text ({exc.reason})") from exc


def _merge(base: dict[str, Any], over: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        slot = path == "model." and key in COMPONENT_SLOTS
        if slot and isinstance(value, dict) and value.get("name", out.get(key, {}).get("name")) != out.get(key, {}).get("name"):
            out[key] = copy.deepcopy(value)  # another component: the old one's arguments do not apply
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{path}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_raw(ref: str | Path, base: Path | None = None, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = _find(str(ref), base).resolve()
    if path in seen:
        raise RecipeError(f"{path}: 'extends' loops back to itself ({' -> '.join(p.name for p in (*seen, path))})")
    raw = _read(path)
    parent = raw.pop("extends", "")
    if parent:
        raw = _merge(_load_raw(parent, path.parent, (*seen, path)), raw)
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.batch_size=8"`` -> (["train", "batch_size"], 8). Values are TOML, else strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override '{text}' must look like section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override '{text}': '{part}' is not a table")
        if len(keys) == 3 and keys[0] == "model" and keys[2] == "name" and node.get("name") not in (None, value):
            node.clear()  # another component: the old one's arguments do not apply
        node[keys[-1]] = value
    return raw


# ---------------------------------------------------------------- validation

def factory_params(factory: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """A factory's parameters (``*args``/``**kwargs`` left out) and its resolved type hints."""
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: names are still checked
        hints = {}
    params = {n: p for n, p in signature.parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return params, hints


def _validate_component(slot: str, table: Any, registry: Any) -> dict[str, Any]:
    kind, _, trainable_default, supplied = COMPONENT_SLOTS[slot]
    where = f"model.{slot}"
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: expected a table with at least 'name'")
    if "name" not in table:
        raise RecipeError(f"{where}: missing 'name' (one of: {', '.join(registry.names(kind))})")
    name = _check_type(f"{where}.name", table["name"], str)
    try:
        spec = registry.get(kind, name, where=f"{where}.name")
        factory = spec.load()
    except PengiKitError as exc:  # unknown or unloadable component: a recipe problem here
        raise RecipeError(str(exc)) from exc
    params, hints = factory_params(factory)
    out: dict[str, Any] = {"name": spec.name,
                           "trainable": _check_type(f"{where}.trainable", table.get("trainable", trainable_default), bool)}
    for key, value in table.items():
        if key in ("name", "trainable"):
            continue
        if key in supplied:
            raise RecipeError(f"{where}.{key}: set by the model from the neighbouring components; remove it")
        if key not in params:
            options = [p for p in params if p not in supplied] + ["name", "trainable"]
            raise RecipeError(f"{where}.{key}: unknown argument of {kind} '{spec.name}'; {_suggest(key, options)}")
        expected = _hint_types(hints.get(key, params[key].annotation))
        settings = next((t for t in expected or () if dataclasses.is_dataclass(t)), None)
        if settings is not None:  # a sub-table such as [model.lm.lora]
            out[key] = _check_settings(f"{where}.{key}", value, settings)
        else:
            out[key] = _check_type(f"{where}.{key}", value, expected) if expected else value
    if out["trainable"] and out.get("lora") is not None:
        raise RecipeError(f"{where}.trainable: true fine-tunes every weight, [{where}.lora] trains adapters on a "
                          "frozen base; set trainable = false, or remove the lora table")
    for key, param in params.items():
        if key in supplied or key in out:
            continue
        if param.default is inspect.Parameter.empty:
            raise RecipeError(f"{where}: {kind} '{spec.name}' needs '{key}'; add it to [{where}]")
        if param.default is not None:
            out[key] = param.default
    return out


def _check_settings(where: str, value: Any, cls: type) -> dict[str, Any]:
    """A table for a factory argument typed as a dataclass (``lora: LoRA | None``): its keys
    (did you mean), each field's type and the ``range``/``choices`` in its metadata, then the
    dataclass's own checks. Returns the table with every default filled in."""
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a table [{where}], got {_type_name(type(value))} {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in fields:
            raise RecipeError(f"{where}.{key}: unknown key; {_suggest(key, fields)}")
        expected = _hint_types(hints[key])
        out[key] = _check_type(f"{where}.{key}", item, expected) if expected else item
        of = typing.get_args(hints[key]) if typing.get_origin(hints[key]) is list else ()
        for element in out[key] if of else ():
            _check_type(f"{where}.{key}", element, of[0])
        meta = fields[key].metadata
        Field(expected or object, None, "", meta.get("choices", ()), meta.get("range", "")).check(f"{where}.{key}",
                                                                                                 out[key])
    try:
        cls(**out)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc}") from exc
    return {name: out[name] if name in out else default_of(f) for name, f in fields.items()}


def validate(raw: dict[str, Any], registry: Any | None = None) -> dict[str, Any]:
    """Fill defaults and check every key, type and component argument."""
    if registry is None:
        from pengi_kit.plugins import registry as get_registry
        registry = get_registry()
    resolved: dict[str, Any] = {}
    top_keys = set(SCHEMA[""]) | set(SECTIONS)
    for key in raw:
        if key not in top_keys:
            raise RecipeError(f"unknown top-level key '{key}'; {_suggest(key, top_keys)}")
    for key, field in SCHEMA[""].items():
        if key != "extends":
            resolved[key] = _check_type(key, raw.get(key, field.default), field.type)
            field.check(key, resolved[key])
    for section in SECTIONS:
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise RecipeError(f"[{section}]: expected a table")
        fields = SCHEMA[section]
        extra = set(COMPONENT_SLOTS) if section == "model" else set()
        out: dict[str, Any] = {}
        for key, value in given.items():
            if key in extra:
                continue
            if key not in fields:
                raise RecipeError(f"{section}.{key}: unknown key; {_suggest(key, set(fields) | extra)}")
            field = fields[key]
            out[key] = _check_type(f"{section}.{key}", value, field.type)
            field.check(f"{section}.{key}", out[key])
        for key, field in fields.items():
            if field.default is not None:  # None: unset, and TOML cannot write it
                out.setdefault(key, copy.deepcopy(field.default))
        if section == "model" and resolved["task"] in TASK_SLOTS:
            needed = TASK_SLOTS[resolved["task"]]
            for slot in COMPONENT_SLOTS:
                if slot in given and slot not in needed:
                    raise RecipeError(f"model.{slot}: task '{resolved['task']}' builds only "
                                      f"{' and '.join(needed)}; remove [model.{slot}]")
                if slot in needed and slot not in given:
                    raise RecipeError(f"model.{slot}: missing; task '{resolved['task']}' needs a [model.{slot}] "
                                      "table with a 'name'")
                if slot in needed:
                    out[slot] = _validate_component(slot, given[slot], registry)
        elif section == "model":
            chat = out["layout"] == "chat"
            for slot in ("text_encoder", "text_mapper") if chat else ():
                if slot_enabled(given, slot):
                    raise RecipeError(f"model.{slot}: the chat layout has no prompt branch (the conversation's "
                                      f"text goes through the LM's own embeddings); remove [model.{slot}], or set its "
                                      "name = \"none\"")
            for slot, (_, required, _, _) in COMPONENT_SLOTS.items():
                if chat and slot in SWITCHABLE_SLOTS:
                    if required:
                        out[slot] = {"name": "none", "trainable": False}
                    continue
                if slot in SWITCHABLE_SLOTS and isinstance(given.get(slot), dict) and given[slot].get("name") == "none":
                    if required:
                        out[slot] = {"name": "none", "trainable": False}
                    continue  # a component switched off (e.g. by a recipe that extends another)
                if slot in given:
                    out[slot] = _validate_component(slot, given[slot], registry)
                elif required:
                    raise RecipeError(f"model.{slot}: missing; add a [model.{slot}] table with a 'name'")
        resolved[section] = out
    if not resolved["name"]:
        resolved["name"] = "run"
    if not resolved["train"]["output_dir"]:
        resolved["train"]["output_dir"] = f"runs/{resolved['name']}"
    _check_consistency(resolved)
    return resolved


def _check_consistency(recipe: dict[str, Any]) -> None:
    if recipe["task"] == "pengi" and recipe["pretrain"] != {k: f.default for k, f in SCHEMA["pretrain"].items()}:
        raise RecipeError("[pretrain]: only used by task = 'tagging' or 'contrastive'; remove it, or set task")
    try:
        Decoding(**recipe["generate"])
    except ValueError as exc:
        raise RecipeError(f"[generate]: {exc}") from None
    train = recipe["train"]
    if train["batch_size"] % train["grad_accum"]:
        raise RecipeError(f"train.batch_size {train['batch_size']} is not divisible by train.grad_accum "
                          f"{train['grad_accum']}; make it a multiple")
    _check_data_sources(recipe)
    from pengi_kit.data.augment import Augment

    recipe["data"]["augment"] = _check_settings("data.augment", recipe["data"]["augment"], Augment)
    if train["encoder_cache"]:
        if Augment(**recipe["data"]["augment"]).active:
            raise RecipeError("train.encoder_cache: [data.augment] varies the clips every epoch, so no kept output "
                              "would be read again; use one or the other")
        encoder = recipe["model"]["audio_encoder"]
        if encoder.get("trainable", True) or encoder.get("lora") is not None:
            raise RecipeError("train.encoder_cache keeps a frozen encoder's outputs; set [model.audio_encoder] "
                              "trainable = false without a lora table, or leave encoder_cache unset")
    if train["pack"] and recipe["model"]["layout"] != "chat":
        raise RecipeError("train.pack: packs the chat layout's conversations; set model.layout = \"chat\", or "
                          "train.pack = false")
    if recipe["data"]["augment"]["mixup"] and recipe["task"] != "tagging":
        raise RecipeError(f"data.augment.mixup: mixes labels, which task '{recipe['task']}' does not have; "
                          "use it for task = 'tagging', or set it to 0")
    if train["strategy"] == "fsdp" and train["precision"] == "bf16" and train["activation_checkpointing"]:
        import transformers

        if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 23):
            raise RecipeError(f"train.activation_checkpointing with strategy 'fsdp' in bf16 needs transformers "
                              f">= 5.23 (installed: {transformers.__version__}, whose checkpointing recomputes each "
                              "block with FSDP's hooks inside, in mixed dtypes); upgrade transformers, or use fp32 "
                              "or ddp")
    model = recipe["model"]
    if recipe["task"] in TASK_SLOTS:
        if train["strategy"] == "fsdp":
            raise RecipeError(f"train.strategy = 'fsdp' shards an LM too large to replicate; task "
                              f"'{recipe['task']}' has none: use 'ddp'")
        return
    if not slot_enabled(model, "text_mapper"):
        if "text_encoder" in model:
            raise RecipeError("model.text_mapper: a text encoder needs a text mapper; set its name, or switch "
                              "the text encoder off too (name = \"none\")")
    elif "text_encoder" not in model and model["text_mapper"]["name"] == "mlp":
        raise RecipeError("model.text_mapper: without a text encoder the prompt is a token sequence, which "
                          "the 'mlp' mapper cannot take; use name = \"transformer\"")
    elif "text_encoder" not in model and model["text_mapper"].get("prefix_length", 0) < model["prompt_length"]:
        raise RecipeError(f"model.text_mapper.prefix_length {model['text_mapper'].get('prefix_length')} is shorter "
                          f"than model.prompt_length {model['prompt_length']}: without a text encoder the prompt "
                          "tokens are the mapper's input; make prefix_length at least prompt_length")


DATA_SOURCE_KEYS = {"manifest": str, "weight": float, "task": str, "templates": dict, "prompt": str, "format": str,
                    "columns": dict, "split": str, "streaming": bool}


def _check_data_sources(recipe: dict[str, Any]) -> None:
    """A list under data.train / data.valid: tables with a manifest, a positive weight, and
    optionally the dataset's default task, its own templates ({task: "prompt {field}"}) or
    one prompt for every row without its own."""
    from pengi_kit.data.templates import TemplateError, placeholders, template_fields

    for split in ("train", "valid"):
        entries = recipe["data"][split]
        if isinstance(entries, str):
            continue
        if not entries:
            raise RecipeError(f"data.{split}: empty list; name at least one {{manifest = \"...\"}}")
        for i, entry in enumerate(entries):
            where = f"data.{split}[{i}]"
            if not isinstance(entry, dict):
                raise RecipeError(f"{where}: expected a table like {{manifest = \"train.jsonl\", weight = 1.0}}, "
                                  f"got {entry!r}")
            for key, value in entry.items():
                if key not in DATA_SOURCE_KEYS:
                    raise RecipeError(f"{where}.{key}: unknown key; {_suggest(key, DATA_SOURCE_KEYS)}")
                entry[key] = _check_type(f"{where}.{key}", value, DATA_SOURCE_KEYS[key])
            if not entry.get("manifest"):
                raise RecipeError(f"{where}: missing 'manifest' (a manifest path, shard pattern or 'synthetic')")
            entry.setdefault("weight", 1.0)
            if not entry["weight"] > 0:
                raise RecipeError(f"{where}.weight: must be positive, got {entry['weight']}")
            if "prompt" in entry and not entry["prompt"].strip():
                raise RecipeError(f"{where}.prompt: empty; write the question every row is asked, or remove it")
            if "format" in entry:
                from pengi_kit.data.conversations import FORMATS

                if entry["format"] not in FORMATS:
                    raise RecipeError(f"{where}.format: unknown conversation format {entry['format']!r}; "
                                      f"{_suggest(entry['format'], FORMATS)}")
                if recipe["model"]["layout"] != "chat":
                    raise RecipeError(f"{where}.format: conversations are read by the chat layout; set "
                                      "model.layout = \"chat\"")
                if {"prompt", "task", "templates"} & set(entry):
                    raise RecipeError(f"{where}: a conversation file's rows bring their own questions; remove "
                                      "prompt, task and templates")
            for key, column in entry.get("columns", {}).items():
                from pengi_kit.data.hf import COLUMNS

                if key not in COLUMNS or not isinstance(column, str):
                    raise RecipeError(f"{where}.columns.{key}: expected one of {', '.join(COLUMNS)} naming a "
                                      f"column (a string), got {key} = {column!r}")
            templates = entry.get("templates", {})
            if "prompt" in entry and templates:
                raise RecipeError(f"{where}: prompt and templates together, but the prompt replaces every "
                                  "template; keep one of them")
            for task, template in templates.items():
                if not isinstance(template, str) or not template.strip():
                    raise RecipeError(f"{where}.templates.{task}: expected a prompt string, got {template!r}")
                try:
                    placeholders(template)
                except TemplateError as exc:
                    raise RecipeError(f"{where}.templates.{task}: {exc}") from None
            if "task" in entry and entry["task"] not in templates:
                try:
                    template_fields(entry["task"])
                except TemplateError as exc:
                    raise RecipeError(f"{where}.task: {exc}") from None


def check_files(recipe: dict[str, Any]) -> None:
    """Every local file a resolved recipe names exists: component weights (``pretrained``,
    ``tokenizer``) and the data sources. Run before any model is built or weight downloaded,
    so that ``validate`` refuses what ``train`` could not start. Checkpoints do not need it:
    their recipes may name training data that is long gone."""
    import glob

    from pengi_kit.data.hf import is_hf_source
    from pengi_kit.data.shards import is_shard_source, resolve_shards
    from pengi_kit.sources import looks_local, weight_sources

    for slot, _, key, value in weight_sources(recipe):
        if looks_local(value) and not Path(value).expanduser().exists():
            fix = ("run `pengi-kit demo` first: it pretrains this encoder" if recipe["name"] == "demo" else
                   "check the path (relative to the current directory); `pengi-kit import` writes weights "
                   "from a published checkpoint")
            raise RecipeError(f"model.{slot}.{key}: '{value}' does not exist ({fix})")
    for split in ("train", "valid"):
        entries = recipe["data"][split]
        for i, entry in enumerate([entries] if isinstance(entries, str) else entries):
            name = entry if isinstance(entry, str) else entry["manifest"]
            where = f"data.{split}" + ("" if isinstance(entries, str) else f"[{i}].manifest")
            if not name or name == "synthetic":
                continue
            if is_hf_source(name):
                if not Path(name).is_dir() and not glob.glob(name):
                    raise RecipeError(f"{where}: '{name}' matches no file (paths are relative to the current "
                                      f"directory, {Path.cwd()})")
            elif is_shard_source(name):
                try:
                    resolve_shards(name)
                except PengiKitError as exc:
                    raise RecipeError(f"{where}: {exc}") from None
            elif not Path(name).is_file():
                raise RecipeError(f"{where}: manifest '{name}' not found (paths are relative to the current "
                                  f"directory, {Path.cwd()}); write one with `pengi-kit data prepare`, or use "
                                  "'synthetic'")
    from pengi_kit.data.augment import Augment

    Augment(**recipe["data"]["augment"]).check()  # its noise and impulse-response sources


def load_recipe(ref: str | Path, overrides: typing.Sequence[str] = (), registry: Any | None = None) -> dict[str, Any]:
    """Read, extend, override and validate a recipe; returns the resolved dict."""
    return validate(apply_overrides(_load_raw(ref), overrides), registry)


def from_dict(raw: dict[str, Any], overrides: typing.Sequence[str] = (), registry: Any | None = None) -> dict[str, Any]:
    return validate(apply_overrides(raw, overrides), registry)


def dumps(recipe: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(recipe)
