import json

import soundfile as sf
from click.testing import CliRunner

from pengi_kit.cli import main
from pengi_kit.recipe import dumps, from_dict
from pengi_kit.testing import tiny_recipe


def test_validate_misspelt_key_is_one_line_with_the_fix(tmp_path):
    raw = tiny_recipe(tmp_path)
    raw["train"]["batch_sise"] = raw["train"].pop("batch_size")
    (tmp_path / "bad.toml").write_text(dumps(raw))
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["error: train.batch_sise: unknown key; did you mean 'batch_size'?"]


def test_validate_and_show_with_overrides(tmp_path):
    (tmp_path / "r.toml").write_text(dumps(tiny_recipe(tmp_path)))
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(tmp_path / "r.toml")])
    assert ok.exit_code == 0 and ok.output.startswith("ok:")
    shown = runner.invoke(main, ["show", str(tmp_path / "r.toml"), "-s", "optim.lr=0.5", "-s", "train.batch_size=4"])
    assert shown.exit_code == 0
    (tmp_path / "shown.toml").write_text(shown.output)
    resolved = from_dict(__import__("tomllib").loads(shown.output))
    assert resolved["optim"]["lr"] == 0.5 and resolved["train"]["batch_size"] == 4


def test_list_components_by_kind_and_plugins():
    runner = CliRunner()
    out = runner.invoke(main, ["list-components", "--kind", "audio_encoder"]).output
    rows = [line.split() for line in out.strip().splitlines()]
    assert {row[0] for row in rows} == {"audio_encoder"}
    assert {row[1] for row in rows if row[2] == "builtin"} == {"cnn14", "htsat", "whisper", "hf-audio"}
    bad = runner.invoke(main, ["list-components", "--kind", "vocoder"])
    assert bad.exit_code == 2 and "use one of" in bad.output
    plugins = json.loads(runner.invoke(main, ["plugins", "--json"]).output)
    assert plugins[0]["name"] == "builtin" and plugins[0]["hooks"] == ["register_components", "register_importers",
                                                                       "register_tasks"]


def test_generate_prints_one_line_per_clip(tmp_path, untrained_checkpoint):
    path = untrained_checkpoint
    from pengi_kit.data.synthetic import SyntheticCorpus
    clips = []
    for i in range(2):
        clips.append(str(tmp_path / f"c{i}.wav"))
        sf.write(clips[-1], SyntheticCorpus(2, sample_rate=44100).clip(i).audio, 44100)  # resampled on load
    runner = CliRunner()
    text = runner.invoke(main, ["generate", str(path), *clips, "--prompt", "this is a sound of"])
    assert text.exit_code == 0, text.output
    assert [line.split("\t")[0] for line in text.output.strip().splitlines()] == clips
    rows = [json.loads(line) for line in runner.invoke(
        main, ["generate", str(path.parent.parent), *clips, "--json", "--method", "beam", "--beam-size", "2"]).output.splitlines()]
    assert [r["audio"] for r in rows] == clips and all(r["prompt"] == "generate audio caption" for r in rows)
    missing = runner.invoke(main, ["generate", str(path), str(tmp_path / "nope.wav")])
    assert missing.exit_code == 2 and "nope.wav" in missing.output
