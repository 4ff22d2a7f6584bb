"""Evaluation tasks and checkpoint importers are extension points like components: a plugin
registers them through a real entry point, the CLI lists them in its help and runs them,
and a suite file accepts them."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from pengi_kit import plugins
from pengi_kit.cli import main

HOOKS = '''
from pengi_kit import hookimpl


@hookimpl
def register_tasks(register):
    register("exact-match", "throwaway_extensions.task:exact_match", description="Answers equal to the reference text")


@hookimpl
def register_importers(register):
    register("throwaway", "throwaway_extensions.convert:import_text", description="A text file into a folder")
'''

TASK = '''
from pengi_kit.data.manifest import read_manifest
from pengi_kit.evaluation.tasks import Result


def exact_match(pengi, manifest, *, on_error="skip", limit=None, batch_size=32, prompt=None, **decoding):
    examples, problems = read_manifest(manifest, on_error=on_error)
    answers = pengi.generate([str(e.audio) for e in examples], [prompt or e.prompt for e in examples],
                             batch_size=batch_size, **decoding)
    hits = [a == e.text for a, e in zip(answers, examples)]
    return Result("exact-match", metrics={"accuracy": sum(hits) / len(hits)}, problems=problems)
'''

IMPORTER = '''
from pathlib import Path


def import_text(source, out, *, force=False):
    out = Path(out)
    out.mkdir(exist_ok=force)
    (out / "converted.txt").write_text(Path(source).read_text().upper())
    return {"mapped": 1, "ignored": {"blank lines": []}, "usage": f"use it: cat {out}/converted.txt\\n"}
'''

FORMATS = {"pengi", "panns", "laion-clap", "ms-clap", "ms-clapcap"}
TASKS = {"captioning", "aqa", "classification", "retrieval", "linear-probe", "multiple-choice", "listening"}


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    package = tmp_path / "throwaway_extensions"
    package.mkdir()
    for name, source in (("__init__", HOOKS), ("task", TASK), ("convert", IMPORTER)):
        (package / f"{name}.py").write_text(source)
    dist = tmp_path / "throwaway-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pengi_kit]\nthrowaway = throwaway_extensions\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.partition(".")[0] == "throwaway_extensions"]:
        del sys.modules[name]  # a previous test's copy, from another tmp_path
    plugins.reset()  # conftest resets again after the test
    return tmp_path


def _listed(help_text: str, title: str) -> set[str]:
    """The names in the ``title:`` section of a command's help (the first word of each entry)."""
    section = help_text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line[2] != " "}


def test_help_and_listing_show_the_plugin_task_and_importer_without_torch(plugin_path):
    code = textwrap.dedent("""
        import json, sys
        from click.testing import CliRunner
        from pengi_kit.cli import main
        out = {}
        for args in (["--help"], ["list-components", "--json"], ["plugins", "--json"], ["import", "--help"],
                     ["evaluate", "--help"], ["data", "prepare", "--help"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
            out[" ".join(args)] = result.output
            if args == ["--help"]:  # the top-level help reads no plugin
                out["plugins loaded by --help"] = "pengi_kit.plugins" in sys.modules
        from pengi_kit.plugins import registry
        out["datasets"] = registry().names("dataset")
        out["torch imported"] = "torch" in sys.modules
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                    check=True).stdout)
    assert out["torch imported"] is False and out["plugins loaded by --help"] is False
    rows = {(r["kind"], r["name"]): r for r in json.loads(out["list-components --json"])}
    assert rows[("task", "exact-match")]["plugin"] == "throwaway"
    assert rows[("importer", "throwaway")]["factory"] == "throwaway_extensions.convert:import_text"
    assert {("task", t) for t in TASKS} | {("importer", f) for f in FORMATS} <= set(rows)
    info = {p["name"]: p for p in json.loads(out["plugins --json"])}
    assert info["throwaway"]["hooks"] == ["register_importers", "register_tasks"] and not info["throwaway"]["error"]
    assert _listed(out["import --help"], "Formats") == FORMATS | {"throwaway"}
    assert "A text file into a folder" in out["import --help"]
    assert _listed(out["evaluate --help"], "Tasks") == TASKS | {"exact-match"}
    assert _listed(out["data prepare --help"], "Datasets") == set(out["datasets"]) >= {"clotho", "esc50"}
    assert "fsdd" in out["data prepare --help"]  # aliases too


def test_plugin_importer_runs_from_the_cli(plugin_path, tmp_path):
    source = tmp_path / "weights.txt"
    source.write_text("hello")
    result = CliRunner().invoke(main, ["import", "throwaway", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "converted.txt").read_text() == "HELLO"
    assert f"imported {source} (throwaway): 1 keys mapped" in result.output
    assert "ignored 0 (blank lines)" in result.output and "use it: cat" in result.output
    refused = CliRunner().invoke(main, ["import", "throwaway", str(source), "--out", str(tmp_path / "o2"), "--lm", "x"])
    assert refused.exit_code == 2 and "format 'throwaway' takes no --lm" in refused.output
    unknown = CliRunner().invoke(main, ["import", "throwawy", str(source), "--out", str(tmp_path / "o3")])
    assert unknown.exit_code == 2 and "did you mean 'throwaway'" in unknown.output


class _Echo:
    """A stand-in model that answers every prompt with the prompt itself."""

    def generate(self, clips, prompts, **options):
        return list(prompts)


def test_plugin_task_runs_alone_and_in_a_suite(plugin_path, tmp_path):
    from pengi_kit.evaluation.suite import load_suite, run_suite, table
    from pengi_kit.evaluation.tasks import evaluate

    manifest = tmp_path / "qa.jsonl"
    manifest.write_text('{"audio": "a.wav", "prompt": "yes", "text": "yes"}\n'
                        '{"audio": "b.wav", "prompt": "no", "text": "yes"}\n')
    assert evaluate(_Echo(), "exact-match", manifest).metrics == {"accuracy": 0.5}
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[[task]]\nname = "echo check"\ntask = "exact-match"\nmanifest = "{manifest.name}"\n'
                     'published = { accuracy = 0.9 }\n')
    _, specs = load_suite(suite, data_root=tmp_path)
    run_suite(_Echo(), specs, batch_size=4)
    assert specs[0].status == "ok" and specs[0].result.metrics == {"accuracy": 0.5}
    assert "0.5000" in table(specs) and "0.9000" in table(specs)


def test_unknown_task_is_refused_before_the_model_loads(plugin_path, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "no-checkpoint"), "--task", "exact-match!",
                                       "--manifest", "m.jsonl"])
    assert result.exit_code == 2 and "unknown task 'exact-match!'; did you mean 'exact-match'" in result.output
