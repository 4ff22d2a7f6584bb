"""The decoding options, defined once: :class:`Decoding`.

Each field carries its type, default and help (and its choices); the recipe's
``[generate]`` table (:data:`pengi_kit.recipe.SCHEMA`) and the decoding flags of
``pengi-kit generate``/``describe``/``evaluate`` are derived from them. The search
itself is in :mod:`pengi_kit.generation`; this module imports no torch, so that
reading a recipe or the command line does not load it.
"""
from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

METHODS = ("beam", "greedy", "sample")
COMPAT_MODES = ("none", "pengi")
PENGI_MAX_NEW_TOKENS = 67  # the reference's entry_length
DEFAULT_MAX_NEW_TOKENS = 30


def option(default: Any, help: str, choices: tuple[Any, ...] = ()) -> Any:
    """A :class:`Decoding` field with the help (and choices) that recipes and the CLI show."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(f: Field) -> Any:
    """A field's default value (a fresh one for a list)."""
    return f.default_factory() if f.default is MISSING else f.default


@dataclass
class Decoding:
    """Decoding settings; the recipe's ``[generate]`` table holds a model's defaults.

    A field whose default is None is unset (a recipe leaves the key out).
    """

    method: str = option("beam", "Decoding method.", METHODS)
    beam_size: int = option(5, "Beams per clip and prompt.")
    max_new_tokens: int | None = option(
        None, f"Tokens generated at most; unset: {DEFAULT_MAX_NEW_TOKENS}, or with compat = 'pengi' the "
              f"reference's entry_length, {PENGI_MAX_NEW_TOKENS}.")
    min_new_tokens: int = option(0, "End-of-text is forbidden before this many tokens.")
    length_penalty: float = option(1.0, "Beam score = sum log p / length ** length_penalty.")
    temperature: float = option(1.0, "Logits are divided by this.")
    top_k: int = option(0, "Sampling: keep the k most likely tokens; 0 keeps all.")
    top_p: float = option(1.0, "Sampling: nucleus probability mass.")
    no_repeat_ngram_size: int = option(0, "Forbid repeating n-grams of this size; 0 disables.")
    stop: list[str] = option([], "Strings that end generation (the stop string is cut).")
    seed: int | None = option(None, "Seed for sampling; unset: a different draw at each call.")
    compat: str = option("none", "'pengi': decode token for token as the reference Pengi wrapper (stop on "
                         "' <|endoftext|>''s first token, its beam ranking, prompt embedding not normalised).",
                         COMPAT_MODES)
    capitalize: bool = option(False, "Upper-case each text's first character and lower-case the rest "
                              "(str.capitalize), as msclap's CLAPCap captions.")
    compile: bool = option(False, "Capture the per-step decode with torch.compile (CUDA graphs) over a static KV "
                           "cache; the first batch of each size compiles. Same tokens; CUDA only (elsewhere a "
                           "no-op with a note).")

    def __post_init__(self) -> None:
        if self.compat is None:
            self.compat = "none"
        if self.method not in METHODS:
            raise ValueError(f"decoding method {self.method!r}: use 'beam', 'greedy' or 'sample'")
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"compat={self.compat!r}: use 'none' or 'pengi' (the reference wrapper's decoding)")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        checks = [
            (self.beam_size >= 1, f"beam_size must be >= 1, got {self.beam_size}"),
            (self.max_new_tokens is None or self.max_new_tokens >= 1,
             f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.min_new_tokens >= 0, f"min_new_tokens must be >= 0, got {self.min_new_tokens}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 keeps all), got {self.top_k}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.no_repeat_ngram_size >= 0, f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}"),
            (self.temperature > 0 or self.compat == "pengi",
             f"temperature must be > 0, got {self.temperature} (use method='greedy' for argmax decoding)"),
            (all(isinstance(s, str) and s for s in self.stop), f"stop must be non-empty strings, got {self.stop!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.compat == "pengi" and self.method == "beam":
            extra = [f.name for f in fields(self) if f.name in ("length_penalty", "min_new_tokens",
                                                                 "no_repeat_ngram_size", "stop")
                     and getattr(self, f.name) != default_of(f)]
            if extra:
                raise ValueError(f"compat='pengi' beam search is the reference's, which has no {', '.join(extra)}; "
                                 "leave them at their defaults or use compat='none'")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Decoding":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown decoding option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**values)

    @property
    def max_tokens(self) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return PENGI_MAX_NEW_TOKENS if self.compat == "pengi" else DEFAULT_MAX_NEW_TOKENS
