"""Task templates: Pengi's prompt strings and rendering."""

from __future__ import annotations

import pytest

from pengi_kit.data.templates import TEMPLATES, TemplateError, render, template_fields
from pengi_kit.errors import PengiKitError

REQUIRED = ["caption", "qa", "classification", "metadata", "sound_event", "acoustic_scene",
            "speech_emotion", "speech_sentiment", "music_genre", "music_instrument",
            "music_pitch", "music_velocity"]


def test_required_tasks_present_with_non_empty_prompts():
    for task in REQUIRED:
        assert TEMPLATES[task] and all(isinstance(p, str) and p.strip() for p in TEMPLATES[task])


def test_pengi_reference_prompts():
    # The three prompts of the reference wrapper's describe(), and the QA template.
    assert TEMPLATES["caption"][0] == "generate audio caption"
    assert TEMPLATES["metadata"][0] == "generate metadata"
    assert TEMPLATES["classification"][0] == "this is a sound of"
    assert TEMPLATES["qa"][0] == "question: {question}"


def test_render_fills_fields_and_ignores_extra_ones():
    assert render("caption") == "generate audio caption"
    assert render("caption", question="ignored") == "generate audio caption"
    assert render("qa", question="is a dog barking?") == "question: is a dog barking?"
    # Braces inside a value are text, not placeholders.
    assert render("qa", question="what is {this}?") == "question: what is {this}?"


def test_template_fields():
    assert template_fields("qa") == ["question"]
    assert template_fields("caption") == []


def test_unknown_task_suggests_the_closest():
    with pytest.raises(TemplateError, match=r"unknown task 'captoin' \(did you mean 'caption'\?"):
        render("captoin")
    with pytest.raises(PengiKitError, match="known tasks: caption, qa"):
        render("zzzzzz")


@pytest.mark.parametrize("fields", [{}, {"question": ""}, {"question": None}])
def test_missing_field(fields):
    with pytest.raises(TemplateError, match="task 'qa' needs field 'question'") as info:
        render("qa", **fields)
    assert "\n" not in str(info.value)
