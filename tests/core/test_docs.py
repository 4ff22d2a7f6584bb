"""The documentation site: generated pages up to date, every command and hook documented,
and a strict MkDocs build (a broken link or anchor, or a page outside the nav, fails)."""
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md")))


def test_generated_reference_pages_are_up_to_date():
    stale = _gen_docs().stale()
    assert not stale, f"out of date: {', '.join(stale)}; run: python scripts/gen_docs.py (and commit docs/reference/)"


def _command_paths(group: click.Group, prefix: str) -> list[str]:
    paths = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        paths.append(f"{prefix} {name}")
        if isinstance(command, click.Group):
            paths += _command_paths(command, f"{prefix} {name}")
    return paths


def test_every_cli_command_is_documented():
    # independent of the generator: reads the command tree and the committed pages
    from pengi_kit.cli import main

    paths = _command_paths(main, "pengi-kit")
    assert "pengi-kit data prepare" in paths
    text = _docs_text()
    missing = [path for path in paths if path not in text]
    assert not missing, f"commands missing from docs/: {missing}; run: python scripts/gen_docs.py"


def test_every_hook_is_documented():
    from pengi_kit import hookspecs

    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(fn, f"{hookspecs.PROJECT}_spec")]
    assert "register_components" in hooks
    text = _docs_text()
    missing = [hook for hook in hooks if hook not in text]
    assert not missing, f"hooks missing from docs/: {missing}; run: python scripts/gen_docs.py"


def test_every_recipe_is_documented():
    recipes = sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("recipes/*.toml"),
                                                            *ROOT.glob("recipes/ablations/*.toml")])
    assert "recipes/pengi_base.toml" in recipes
    text = _docs_text()
    missing = [r for r in recipes if r not in text]
    assert not missing, f"recipes not mentioned in docs/ (e.g. docs/reproducing.md): {missing}"


def test_mkdocs_strict_build(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "reference" / "cli" / "index.html").is_file()
