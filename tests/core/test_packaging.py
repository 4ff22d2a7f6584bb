"""The recipes ship inside the package: a wheel installed elsewhere lists them and uses them by
name from an empty directory; `recipes copy` copies the source file; names resolve to a local
file or the shipped recipe, and a conflicting pair is named."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from pengi_kit.cli import main
from pengi_kit.errors import RecipeError
from pengi_kit.recipe import load_recipe, shipped_recipes

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_a_wheel_lists_and_validates_its_recipes_from_an_empty_directory(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    for name in ("pengi_kit", "recipes", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")}
                                            if copy is shutil.copytree else {}))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("pengi_kit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the test environment's packages (torch, transformers ...) are visible; pengi-kit comes from the wheel
    Path(site, "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    # the test environment's plugins are visible by their entry points but not importable there:
    # they are skipped with a line (strict mode, which CI sets, would stop on them)
    env = {**os.environ, "PYTHONPATH": "", "PENGI_KIT_STRICT_PLUGINS": "0"}

    def run(*args):
        return subprocess.run([python, "-m", "pengi_kit", *args], cwd=empty, capture_output=True, text=True, env=env,
                              timeout=300)

    where = subprocess.run([python, "-c", "import pengi_kit; print(pengi_kit.__file__)"], cwd=empty,
                           capture_output=True, text=True, env=env)
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel's copy, not the source tree
    listed = run("recipes")
    assert listed.returncode == 0 and "pengi_base" in listed.stdout and "ablations/prefix_10" in listed.stdout
    valid = run("validate", "pengi_base", "-s", "data.train=synthetic", "-s", "data.valid=synthetic")
    assert valid.returncode == 0 and valid.stdout.startswith("ok: pengi_base"), valid.stderr
    assert run("validate", "ablations/prefix_10", "-s", "data.train=synthetic", "-s",
               "data.valid=synthetic").returncode == 0  # extends a shipped recipe by name


def test_names_resolve_to_local_files_or_shipped_recipes(tmp_path, monkeypatch):
    shipped = shipped_recipes()
    assert {"pengi_base", "demo", "ablations/prefix_10", "pretrain/tagging", "eval/demo"} <= set(shipped)
    monkeypatch.chdir(tmp_path)
    assert load_recipe("ablations/prefix_10")["model"]["audio_mapper"]["prefix_length"] == 10
    result = CliRunner().invoke(main, ["recipes", "copy", "ablations/prefix_10", "mine.toml"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine.toml").read_bytes() == shipped["ablations/prefix_10"].read_bytes()  # comments kept
    assert load_recipe("mine.toml")["name"] == "ablation_prefix_10"  # its extends names the shipped base
    assert CliRunner().invoke(main, ["recipes", "copy", "demo", "mine.toml"]).exit_code == 2  # no overwrite
    # a local file of a shipped name: the same text is fine, another text is ambiguous
    (tmp_path / "demo.toml").write_bytes(shipped["demo"].read_bytes())
    assert load_recipe("demo")["name"] == "demo"
    (tmp_path / "demo.toml").write_text('extends = "pengi_no_text_encoder"\nname = "mine"\n')
    with pytest.raises(RecipeError, match=r"recipe 'demo' is ambiguous: demo.toml and the shipped recipe .* differ"):
        load_recipe("demo")
    assert load_recipe("./demo.toml")["name"] == "mine"  # a path is a path
    with pytest.raises(RecipeError, match="did you mean 'pengi_base'"):
        load_recipe("pengi_bsae")
