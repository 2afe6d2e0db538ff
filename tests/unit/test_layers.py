"""The layer order in docs/architecture.md holds: every import in src/whisper_tune points down it (or stays
inside its package), no module imports itself back through others, an import written inside a function
says which heavy dependency it keeps lazy, and every module is listed in the architecture page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import REPO

SRC = REPO / "src"
ARCHITECTURE = REPO / "docs" / "architecture.md"
#: what an import inside a function may keep lazy: heavy libraries, and for the package's public names
#: (``whisper_tune.__getattr__``) the config libraries too
LAZY = (
    "torch",
    "transformers",
    "datasets",
    "numpy",
    "soundfile",
    "PyAV",
    "jiwer",
    "matplotlib",
    "peft",
    "pydantic",
)
IMPORT_LINE = re.compile(r"^(from |import |\)$|[A-Za-z_][\w ,]*,?$)")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the core."""
    return {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (SRC / "whisper_tune").rglob("*.py")
    }


def member(module: str) -> str:
    """The layer member a module belongs to: its top-level package or module under whisper_tune
    (``whisper_tune`` itself for the package's ``__init__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layers() -> dict[str, int]:
    """Member -> layer number, read from the Layers table of docs/architecture.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    found: dict[str, int] = {}
    for row in re.finditer(r"^\|\s*(\d+)\s*\|([^|]*)\|", section, re.M):
        for name in re.findall(r"`([^`]+)`", row.group(2)):
            assert name not in found, f"{name} is in two layers"
            found[name] = int(row.group(1))
    return found


def imports_of(path: Path, package: str = "whisper_tune") -> list[tuple[str, int, bool]]:
    """(module, line, inside a function) for every ``package`` import in ``path``, anywhere in it."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == package:
                found.append((child.module, child.lineno, inside))
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names if a.name.split(".")[0] == package]
                found.extend((name, child.lineno, inside) for name in names)
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


def test_the_layer_table_names_every_package_and_top_level_module_once() -> None:
    table = layers()
    assert len(set(table.values())) >= 5
    members = {member(m) for m in modules()}
    assert members - table.keys() == set(), "not placed in a layer of docs/architecture.md"
    assert table.keys() - members == set(), "in the layer table but not in src/whisper_tune"


def test_every_import_points_down_the_layers() -> None:
    table = layers()
    upward = [
        f"{name}:{line} imports {target} (layer {table[member(target)]} from layer {table[member(name)]})"
        for name, path in modules().items()
        for target, line, _ in imports_of(path)
        if member(target) != member(name) and table[member(target)] >= table[member(name)]
    ]
    assert upward == []


def test_no_two_packages_import_each_other() -> None:
    edges = {
        (member(name), member(target))
        for name, path in modules().items()
        for target, _, _ in imports_of(path)
        if member(target) != member(name)
    }
    assert sorted((a, b) for a, b in edges if (b, a) in edges) == []


def test_the_core_has_no_import_cycle() -> None:
    """Between modules, counting imports inside functions too (a cycle there still couples two modules
    both ways)."""
    found = modules()
    graph = {
        name: {target for target, _, _ in imports_of(path) if target in found} - {name}
        for name, path in found.items()
    }
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # the check works
    assert strongly_connected(graph) == []


def test_an_import_inside_a_function_says_which_heavy_dependency_it_keeps_lazy() -> None:
    unexplained = []
    for name, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, line, inside in imports_of(path):
            if not inside or target == "whisper_tune":
                continue
            first = line - 1  # the comment sits above the group of imports this one is in
            while first > 0 and IMPORT_LINE.match(lines[first - 1].strip()):
                first -= 1
            note = (lines[first - 1] if first > 0 else "") + lines[line - 1]
            if "lazy" not in note or not any(dep in note for dep in LAZY):
                unexplained.append(f"{name}:{line} {target}")
    assert unexplained == []


def test_the_architecture_page_lists_every_module() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(SRC / "whisper_tune"))
        for path in (SRC / "whisper_tune").rglob("*.py")
        if path.name != "__init__.py" or path.parent == SRC / "whisper_tune"
        if f"`{path.relative_to(SRC / 'whisper_tune')}`" not in text
    ]
    assert missing == []
