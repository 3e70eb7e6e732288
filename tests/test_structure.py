"""The layout holds: the library under both sides, no cycles, files of a readable size.

Every module's imports are read with :mod:`ast` (those inside functions and under
``if TYPE_CHECKING:`` too), so neither a lazy import nor a type-only one can hide a
dependency: a file that needs another's types sits above it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stagewatch", "trainer", "tui")
MAX_LINES = 600  # a source file longer than this mixes concerns (issue: "about 600")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


MODULES = _modules()
# C extensions (the module beside its .c source): leaves, they import nothing of ours
C_EXTENSIONS = {
    ".".join(f.relative_to(ROOT).with_suffix("").parts)
    for pkg in PACKAGES
    for f in (ROOT / pkg).rglob("*.c")
}


def _imports(name: str, path: Path) -> Iterator[str]:
    """Each module ``path`` imports (a name imported from a package: its module, if it is one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                yield sub if sub in MODULES else mod


def _top(mod: str) -> str:
    return mod.split(".")[0]


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = set()
        for mod in _imports(name, path):
            if mod in C_EXTENSIONS:
                continue
            # the most specific module of ours that the name resolves to
            while mod and mod not in MODULES:
                mod = mod.rpartition(".")[0]
            if mod and mod != name:
                deps.add(mod)
        g[name] = deps
    return g


def _all_imports() -> Iterator[tuple[str, str]]:
    for name, path in MODULES.items():
        for mod in _imports(name, path):
            yield name, mod


def test_the_three_packages_exist() -> None:
    for pkg in PACKAGES:
        assert pkg in MODULES, f"{pkg}/__init__.py is missing"
    assert len(MODULES) > 60  # the scan sees the whole tree


@pytest.mark.parametrize(
    ("side", "never"),
    [
        ("tui", {"trainer"}),
        ("trainer", {"tui"}),
        ("stagewatch", {"trainer", "tui", "textual"}),
    ],
)
def test_the_two_sides_stand_on_the_library_and_never_on_each_other(
    side: str, never: set[str]
) -> None:
    bad = [(a, b) for a, b in _all_imports() if _top(a) == side and _top(b) in never]
    assert not bad, f"{side} imports {never}: " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_the_library_imports_torch_only_inside_functions() -> None:
    bad = []
    for name, path in MODULES.items():
        if _top(name) != "stagewatch":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            bad += [f"{name} -> {m}" for m in mods if _top(m) in ("torch", "textual")]
    assert not bad, "module-level imports of torch/textual in the library: " + ", ".join(bad)


# The monitor's layers, bottom up: a layer imports only layers before it (and stagewatch).
# Lines become rows in source, rows become statistics and snapshots in model, diagnosis
# judges snapshots, report and view show them, commands tie them to the command line.
TUI_LAYERS = ("fmt", "model", "diagnosis", "source", "report", "view", "commands", "cli")


def _tui_layer(mod: str) -> int | None:
    parts = mod.split(".")
    if parts[0] != "tui" or len(parts) < 2 or parts[1] not in TUI_LAYERS:
        return None
    return TUI_LAYERS.index(parts[1])


def test_the_monitors_layers_import_only_the_layers_below() -> None:
    bad = []
    for a, b in _all_imports():
        la, lb = _tui_layer(a), _tui_layer(b)
        if la is not None and lb is not None and lb > la:
            bad.append(f"{a} -> {b}")
    assert not bad, "a tui layer imports one above it: " + ", ".join(sorted(set(bad)))


def test_no_import_cycles_between_files() -> None:
    g = _graph()
    # Tarjan's strongly connected components: a component of more than one file is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_source_file_is_over_600_lines() -> None:
    sizes = {
        str(f.relative_to(ROOT)): len(f.read_text(encoding="utf-8").splitlines())
        for pkg in PACKAGES
        for f in (ROOT / pkg).rglob("*")
        if f.suffix in (".py", ".c", ".tcss")
    }
    big = {f: n for f, n in sizes.items() if n > MAX_LINES}
    assert not big, f"files over {MAX_LINES} lines: {big}"


def test_the_layout_page_names_every_module() -> None:
    # docs/layout.md draws the layout one line per module: a module it does not name is a
    # module added without a place in the drawing
    text = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    missing = [
        str(f.relative_to(ROOT))
        for pkg in PACKAGES
        for f in (ROOT / pkg).rglob("*.py")
        if f.stem not in ("__init__", "__main__") and f.stem not in words
    ]
    assert not missing, f"docs/layout.md does not name: {missing}"
