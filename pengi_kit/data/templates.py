"""Pengi's task templates: every audio task is a text prompt, the answer is the target text.

``TEMPLATES[task]`` is a list of prompt strings; the first is the canonical one that
:func:`render` uses, any further ones are alternatives (for prompt augmentation).
``{name}`` placeholders are filled from the manifest row (``question`` for ``qa``).

Where the strings come from:

- ``generate audio caption``, ``generate metadata`` and ``this is a sound of`` are the
  three prompts of the reference wrapper's ``describe()`` (microsoft/Pengi,
  ``wrapper.py``); its README recommends ``generate metadata`` as the default.
- ``question: {question}``, ``this acoustic scene is``, ``this emotion is``,
  ``this sentiment is`` and ``this music note is`` are the remaining task templates of
  the Pengi paper (Deshmukh et al. 2023, Table 1: eight templates in all). The same
  strings are reused verbatim by public Audio Flamingo data-preparation code
  (Cochl/DCASE scenes, MELD/MSP-Podcast emotion and sentiment, NSynth).
- ``this music note is produced by``, ``... has pitch`` and ``... has velocity`` are the
  per-attribute NSynth prompts of that Audio Flamingo code, which extends Pengi's
  ``this music note is``; Pengi's own release does not list them.
- ``this music genre is`` is pengi-kit's choice in the same style: the Pengi paper
  reaches genre through ``generate metadata`` and publishes no genre-only prompt.
"""

from __future__ import annotations

import difflib
import string
from typing import Mapping

from pengi_kit.errors import PengiKitError

__all__ = ["TEMPLATES", "TemplateError", "render", "template_fields", "fill", "placeholders"]


class TemplateError(PengiKitError, ValueError):
    """An unknown task name, or a template field the caller did not give.

    The message has the form ``<what> (<fix>)`` so callers can prefix a location.
    """


TEMPLATES: dict[str, list[str]] = {
    "caption": ["generate audio caption"],
    "qa": ["question: {question}"],
    "classification": ["this is a sound of"],
    "sound_event": ["this is a sound of"],
    "acoustic_scene": ["this acoustic scene is"],
    "speech_emotion": ["this emotion is"],
    "speech_sentiment": ["this sentiment is"],
    "metadata": ["generate metadata"],
    "music_note": ["this music note is"],
    "music_genre": ["this music genre is"],
    "music_instrument": ["this music note is produced by"],
    "music_pitch": ["this music note has pitch"],
    "music_velocity": ["this music note has velocity"],
}


def _unknown(task: str) -> TemplateError:
    close = difflib.get_close_matches(task, TEMPLATES, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return TemplateError(f"unknown task '{task}' ({hint}known tasks: {', '.join(TEMPLATES)})")


def template_fields(task: str) -> list[str]:
    """The ``{field}`` names the canonical template of ``task`` needs, in order."""
    if task not in TEMPLATES:
        raise _unknown(task)
    return placeholders(TEMPLATES[task][0])


def placeholders(template: str) -> list[str]:
    """The ``{field}`` names of a prompt template, in order; a malformed template raises."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise TemplateError(f"template {template!r} is malformed: {exc} (write fields as {{name}})") from None
    if "" in names or any(not n.isidentifier() for n in names):
        raise TemplateError(f"template {template!r} has an unnamed or odd field (write fields as {{name}})")
    return list(dict.fromkeys(names))


def fill(template: str, task: str, fields: Mapping[str, object]) -> str:
    """``template`` (a prompt string of ``task``) with its ``{fields}`` filled in from ``fields``.

    >>> fill("question: {question}", "qa", {"question": "is it raining?"})
    'question: is it raining?'
    """
    needed = placeholders(template)
    missing = [name for name in needed if fields.get(name) in (None, "")]
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise TemplateError(
            f"task '{task}' needs field {names} (give it in the row, e.g. \"{missing[0]}\": \"...\")"
        )
    return template.format_map({name: fields[name] for name in needed})


def render(task: str, /, **fields: object) -> str:
    """The prompt for ``task`` with its fields filled in; extra fields are ignored.

    >>> render("qa", question="is a dog barking?")
    'question: is a dog barking?'
    """
    if task not in TEMPLATES:
        raise _unknown(task)
    return fill(TEMPLATES[task][0], task, fields)
