"""The decoding options are the fields of ``Decoding``: every one can be set from a recipe's
[generate] table, from ``-s generate.<field>=...`` and from a CLI flag, and reaches the model."""
import copy
import json
import tomllib
from dataclasses import asdict, fields

import click
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from pengi_kit.cli import main
from pengi_kit.decoding import Decoding
from pengi_kit.errors import RecipeError
from pengi_kit.recipe import dumps, from_dict, load_recipe
from pengi_kit.testing import tiny_recipe

FIELDS = [f.name for f in fields(Decoding)]
# a valid value other than the default for every field (compat "pengi" allows all of them when sampling)
CHANGED = {"method": "sample", "beam_size": 2, "max_new_tokens": 3, "min_new_tokens": 1, "length_penalty": 0.5,
           "temperature": 0.7, "top_k": 3, "top_p": 0.9, "no_repeat_ngram_size": 2, "stop": [".", "!"], "seed": 3,
           "compat": "pengi", "capitalize": True, "compile": True}


def test_the_example_values_cover_every_field_and_differ_from_the_defaults():
    assert sorted(CHANGED) == sorted(FIELDS), "a new Decoding field needs a value here"
    default = asdict(Decoding())
    assert [name for name in FIELDS if CHANGED[name] == default[name]] == []


def test_every_field_round_trips_through_a_recipe(tmp_path):
    recipe = from_dict({**tiny_recipe(tmp_path), "generate": copy.deepcopy(CHANGED)})
    assert recipe["generate"] == CHANGED
    (tmp_path / "resolved.toml").write_text(dumps(recipe))
    again = load_recipe(tmp_path / "resolved.toml")
    assert again["generate"] == CHANGED
    assert asdict(Decoding(**again["generate"])) == CHANGED


def test_unset_options_stay_out_of_the_recipe_and_keep_their_meaning(tmp_path):
    raw = {k: v for k, v in tiny_recipe(tmp_path).items() if k != "generate"}
    plain = from_dict(raw)["generate"]
    assert "seed" not in plain and "max_new_tokens" not in plain  # TOML has no null
    assert Decoding(**plain).max_tokens == 30
    pengi = from_dict({**raw, "generate": {"compat": "pengi"}})["generate"]
    assert Decoding(**pengi).max_tokens == 67  # the reference's entry_length, as docs/generation.md says


def test_overrides_set_every_field_and_are_checked(tmp_path):
    raw = tiny_recipe(tmp_path)
    assert from_dict(raw, ["generate.seed=3"])["generate"]["seed"] == 3
    overrides = [f"generate.{name}={json.dumps(value)}" for name, value in CHANGED.items()]  # JSON: valid TOML
    assert from_dict(raw, overrides)["generate"] == CHANGED
    with pytest.raises(RecipeError, match="generate.seed: expected integer"):
        from_dict(raw, ['generate.seed="x"'])
    with pytest.raises(RecipeError, match=r"\[generate\]: max_new_tokens must be >= 1"):
        from_dict(raw, ["generate.max_new_tokens=0"])


def test_show_with_a_seed_override(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(dumps(tiny_recipe(tmp_path)))
    result = CliRunner().invoke(main, ["show", str(path), "-s", "generate.seed=3"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout)["generate"]["seed"] == 3


@pytest.mark.parametrize("command", ["generate", "describe", "evaluate"])
def test_the_decoding_flags_are_the_fields(command):
    options = [p for p in main.commands[command].params if isinstance(p, click.Option)]
    params = [p for p in options if (p.help or "").endswith("[recipe: [generate]]")]
    assert [p.name for p in params] == FIELDS
    help_text = CliRunner().invoke(main, [command, "--help"]).stdout
    assert all(f"--{name.replace('_', '-')}" in help_text for name in FIELDS)


def _flags(values):
    args = []
    for name, value in values.items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args += [a for item in (value if isinstance(value, list) else [value]) for a in (flag, str(item))]
    return args


def test_every_flag_reaches_pengi_decoding(untrained_checkpoint, tmp_path, monkeypatch):
    from pengi_kit.api import Pengi

    seen = []
    decoding = Pengi.decoding

    def spy(self, **overrides):
        seen.append(decoding(self, **overrides))
        return seen[-1]

    monkeypatch.setattr(Pengi, "decoding", spy)
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(0).uniform(-0.5, 0.5, 8000), 16000)
    result = CliRunner().invoke(main, ["generate", str(untrained_checkpoint), str(clip), "--device", "cpu",
                                       *_flags(CHANGED)])
    assert result.exit_code == 0, result.output
    assert seen and asdict(seen[-1]) == CHANGED
    result = CliRunner().invoke(main, ["generate", str(untrained_checkpoint), str(clip), "--device", "cpu",
                                       "--no-capitalize", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert seen[-1].capitalize is False and seen[-1].seed == 0 and seen[-1].max_new_tokens == 4  # the recipe's
