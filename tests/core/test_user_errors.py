"""A new user's mistakes end in one `error:` line (exit 2) before anything heavy loads; what
`validate` accepts, `train` starts; commands print no messages the user did not cause."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tomli_w
from click.testing import CliRunner

from pengi_kit.cli import main

REPO = Path(__file__).resolve().parents[2]
RATE = 16000


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def recipe_file(tmp_path):
    from pengi_kit.testing import tiny_recipe

    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(tiny_recipe(tmp_path / "run")))
    return path


@pytest.mark.parametrize("override, key, allowed", [
    ("optim.lr=-0.001", "optim.lr", "> 0"),
    ("optim.betas=[0.9]", "optim.betas", "expected 2 numbers, each [0, 1)"),
    ("optim.betas=[0.9, 1.5]", "optim.betas", "each [0, 1)"),
    ("train.max_steps=-5", "train.max_steps", ">= 0"),
    ("train.keep_last=0", "train.keep_last", ">= 1"),
    ("model.projection_dropout=1.0", "model.projection_dropout", "[0, 1)"),
    ("generate.temperature=0.0", "temperature must be > 0", ""),
])
def test_out_of_range_values_fail_validate_naming_key_and_range(recipe_file, override, key, allowed):
    one_error_line(run("validate", recipe_file, "-s", override), key, allowed)


def test_validate_refuses_missing_weights_and_manifests_with_the_fix(recipe_file, tmp_path, monkeypatch):
    assert run("validate", recipe_file).exit_code == 0
    one_error_line(run("validate", recipe_file, "-s", "data.train=nowhere/train.jsonl"),
                   "data.train", "nowhere/train.jsonl", "not found", "pengi-kit data prepare")
    one_error_line(run("validate", recipe_file, "-s", "data.valid=[{manifest = 'gone.csv'}]"),
                   "data.valid[0].manifest", "gone.csv")
    one_error_line(run("validate", recipe_file, "-s", "model.audio_encoder.pretrained=weights/tagger.pth"),
                   "model.audio_encoder.pretrained", "weights/tagger.pth", "does not exist")
    # the demo recipe before `pengi-kit demo`: its tagger is not there yet, and the fix is named
    monkeypatch.chdir(tmp_path)
    one_error_line(run("validate", REPO / "recipes" / "demo.toml"), "runs/demo/tagger/encoder", "pengi-kit demo")
    # and train refuses the same, before any model is built
    one_error_line(run("train", recipe_file, "-s", "data.train=nowhere/train.jsonl"), "data.train")


@pytest.mark.slow
def test_train_offline_fails_fast_in_one_line(tmp_path):
    """The canonical recipe without its manifests, and a hub model that cannot be fetched: one
    line each, in seconds, not after a minute of hub retries."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens on the discard port: unreachable
    for extra in ([], ["-s", "data.train=synthetic", "-s", "data.valid=synthetic",
                       "-s", "model.lm.pretrained=pengi-kit-tests/no-such-model"]):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pengi_kit", "train", "recipes/pengi_base.toml", *extra,
                               "-s", f"train.output_dir={tmp_path / 'run'}"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - start
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert seconds < 30, seconds  # under 10 s on a quiet machine; CI shares its cores
        if extra:
            assert "no-such-model" in errors[0] and "cannot be reached" in proc.stderr


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, RATE), RATE)
    return path


@pytest.mark.parametrize("case", ["recipe", "weights-file", "device", "batch-size", "out-folder"])
def test_generate_mistakes_are_one_line_before_the_model_loads(untrained_checkpoint, clip, case, monkeypatch):
    import pengi_kit.api

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(pengi_kit.api, "load_model", no_load)
    checkpoint = untrained_checkpoint
    args = {
        "recipe": [REPO / "recipes" / "demo.toml", clip],
        "weights-file": [checkpoint / "model.safetensors", clip],
        "device": [checkpoint, clip, "--device", "gpu"],
        "batch-size": [checkpoint, clip, "--batch-size", "0"],
        "out-folder": [checkpoint, clip, "--out", clip.parent / "missing_dir" / "x.txt"],
    }[case]
    needle = {"recipe": "is a recipe, not a checkpoint", "weights-file": "not a checkpoint folder",
              "device": "'gpu' is not a device", "batch-size": "--batch-size", "out-folder": "does not exist"}[case]
    result = run("generate", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output, result.output


@pytest.mark.slow
def test_generate_prints_no_library_warnings_and_text_names_segments(untrained_checkpoint, clip, tmp_path):
    checkpoint = untrained_checkpoint
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(clip), "start": 0.25, "end": 0.75}) + "\n"
                        + json.dumps({"audio": str(clip)}) + "\n")
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "pengi_kit", "generate", str(checkpoint), str(manifest),
                           "--method", "beam", "--beam-size", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no FutureWarning, no [transformers] line
    names = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert names == [f"{clip}[0.25-0.75]", str(clip)]  # no empty start/end columns


def test_evaluate_usage_errors_come_before_torch_and_nothing_scored_is_a_failure(untrained_checkpoint, tmp_path):
    checkpoint = untrained_checkpoint
    code = ("import sys\nfrom pengi_kit.cli import main\ntry:\n    main(['evaluate', sys.argv[1]])\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(checkpoint)], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    suite = tmp_path / "suite.toml"
    suite.write_text('[[task]]\nname = "gone"\ntask = "captioning"\nmanifest = "nowhere.jsonl"\n')
    result = run("evaluate", checkpoint, "--suite", suite)
    assert result.exit_code == 1 and "skipped: " in result.stdout and "no task could be scored" in result.stderr


def test_version_names_the_command():
    proc = subprocess.run([sys.executable, "-m", "pengi_kit", "--version"], capture_output=True, text=True)
    assert proc.stdout.startswith("pengi-kit, version "), proc.stdout


def test_every_option_of_every_command_says_what_it_does():
    import click

    def undocumented(command, path):
        for sub_name, sub in getattr(command, "commands", {}).items():
            yield from undocumented(sub, f"{path} {sub_name}")
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                yield f"{path} {param.opts[0]}"

    assert list(undocumented(main, "pengi-kit")) == []
