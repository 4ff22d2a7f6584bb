"""The package's import graph: no cycle, each room imports only what lies below it, the command
line calls only the public API, and inference never loads the engine, an importer or a model it
does not load.

Function-level imports count as much as module-level ones: hiding an import inside a
function defers a cycle, it does not remove it. Imports under ``if TYPE_CHECKING:``
never run, so they do not count.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pengi_kit

PACKAGE = Path(pengi_kit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = node.orelse
        todo.extend(children)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules an import statement loads (``from pkg import sub`` loads ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([base] if base else [])])
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return {name for name in names if name in modules}


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported package module: line of the first such import}."""
    files = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges = graph.setdefault(module, {})
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, module, path.name == "__init__.py", set(files)):
                if target != module:
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return [*paths[node], start]
                if nxt in component and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_graph_sees_function_level_and_relative_imports():
    tree = ast.parse(textwrap.dedent("""
        from typing import TYPE_CHECKING
        from . import sibling
        if TYPE_CHECKING:
            from pengi_kit import engine
        def f():
            import pengi_kit.recipe
    """))
    modules = {"pengi_kit", "pengi_kit.data", "pengi_kit.data.sibling", "pengi_kit.recipe", "pengi_kit.engine"}
    found = set().union(*(_targets(n, "pengi_kit.data.x", False, modules) for n in _imports(tree)))
    assert found == {"pengi_kit.data.sibling", "pengi_kit.recipe"}
    assert find_cycles({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "pengi_kit.checkpoint" in graph["pengi_kit.models"]  # the graph is real: a function-level import
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(graph, c) for c in cycles)


def _reaches(graph: dict[str, dict[str, int]], module: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules under ``prefixes`` that ``module`` imports directly."""
    return sorted(t for t in graph[module] if t.startswith(prefixes) or t in {p.rstrip(".") for p in prefixes})


def test_each_room_imports_only_what_lies_below_it():
    graph = import_graph()
    inside = lambda prefix: [m for m in graph if m == prefix or m.startswith(prefix + ".")]  # noqa: E731
    above_models = ("pengi_kit.convert", "pengi_kit.engine", "pengi_kit.evaluation", "pengi_kit.api",
                    "pengi_kit.cli", "pengi_kit.demo", "pengi_kit.server")
    problems = []
    for module in inside("pengi_kit.models"):  # models know components, data, folders; nothing above
        problems += [f"{module} -> {t}" for t in _reaches(graph, module, above_models)]
    for module in inside("pengi_kit.components") + ["pengi_kit.folders"]:
        problems += [f"{module} -> {t}" for t in _reaches(graph, module, above_models + ("pengi_kit.models",))]
    problems += [f"pengi_kit.folders -> {t}" for t in _reaches(graph, "pengi_kit.folders", ("pengi_kit.components",))]
    for module in inside("pengi_kit.api") + inside("pengi_kit.engine") + inside("pengi_kit.evaluation"):
        problems += [f"{module} -> {t}" for t in _reaches(graph, module, ("pengi_kit.server",))]  # serving is on top
    for module in inside("pengi_kit.engine"):  # the trainer builds a model, and knows no concrete one
        problems += [f"{module} -> {t}" for t in _reaches(graph, module, ("pengi_kit.models.",))
                     if t != "pengi_kit.models"]
    assert not problems, "imports that climb the house:\n" + "\n".join(problems)


def test_the_command_line_calls_only_the_public_api():
    """cli.py parses arguments and calls ``pengi_kit``'s public API (plus the core modules that
    describe what it parses); no engine, data, model, importer or evaluation internals, no torch."""
    allowed = {"pengi_kit", "pengi_kit.errors", "pengi_kit.registry", "pengi_kit.recipe", "pengi_kit.plugins",
               "pengi_kit.progress", "pengi_kit.devices"}
    assert set(import_graph()["pengi_kit.cli"]) <= allowed
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    third_party = {alias.name.split(".")[0] for node in _imports(tree) if isinstance(node, ast.Import)
                   for alias in node.names} | {node.module.split(".")[0] for node in _imports(tree)
                                               if isinstance(node, ast.ImportFrom) and node.module}
    assert third_party <= {"__future__", "click", "contextlib", "json", "os", "shlex", "sys", "pathlib", "typing",
                           "csv", "pengi_kit"}, third_party


def test_registering_the_builtins_imports_no_torch_and_no_importer():
    script = textwrap.dedent("""
        import sys
        import pengi_kit
        assert pengi_kit.list_components("importer") and pengi_kit.list_components("dataset")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")
                     or (m.startswith("pengi_kit.convert") and m not in ("pengi_kit.convert", "pengi_kit.convert.builtin"))))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_inference_imports_no_engine_importer_or_pretraining_code(tmp_path):
    """Loading a Pengi checkpoint and generating needs no training code, no importer and neither
    pretraining model (checkpoints live outside engine/; importers register as strings). The
    registration table of the importers (pengi_kit.convert.builtin: names and "module:attr"
    strings) is the only module of convert/ that loads."""
    from pengi_kit.checkpoint import save_checkpoint
    from pengi_kit.models import build_model
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    recipe = from_dict(tiny_recipe(tmp_path / "run"))
    save_checkpoint(tmp_path / "ckpt", build_model(recipe), recipe)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import pengi_kit
        pengi = pengi_kit.load({str(tmp_path / "ckpt")!r}, device="cpu")
        pengi.generate([(np.zeros(8000, dtype=np.float32), 16000)], "this is a sound of", max_new_tokens=2)
        assert "pengi_kit.models.pengi" in sys.modules  # the check below sees what loaded
        banned = ("pengi_kit.engine", "pengi_kit.convert.", "pengi_kit.pretraining", "pengi_kit.models.tagging",
                  "pengi_kit.models.clap", "pengi_kit.models.flops")
        print(sorted(m for m in sys.modules if m.startswith(banned) and m != "pengi_kit.convert.builtin"))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
