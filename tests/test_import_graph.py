"""No import cycle among the modules of src/stowplan, counting imports inside functions (a
function-level import hides a cycle from the interpreter, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "stowplan"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The stowplan modules ``name`` imports anywhere in its file (a ``from pkg import x`` where
    ``pkg.x`` is a module counts as importing ``pkg.x``; the package itself is not counted then,
    since importing a submodule only runs the package's ``__init__``, which a cycle check of the
    submodules covers separately)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            subs = {f"{base}.{a.name}" for a in node.names} & known
            out.update(subs)
            if base in known and len(subs) < len(node.names):
                out.add(base)
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_the_graph_sees_function_level_imports() -> None:
    # the checker itself: a cycle through an import inside a function is found
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]
    src = "def f():\n    from stowplan.placement import packing\n"
    tree = ast.parse(src)
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    g = _graph()
    assert "stowplan.placement.packing" in g["stowplan.placement.bestfit"]


def test_no_import_cycle_in_src() -> None:
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles (counting imports inside functions): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


# modules whose __all__ still names what other modules define (outside this branch's rooms):
# agent.serving keeps the names of its split-out modules for the agent's importers
_REEXPORTS_LEFT: set[str] = set()


def _defined(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def _all(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in getattr(node.value, "elts", [])]
    return []


def test_modules_export_only_what_they_define() -> None:
    # importers import a name from the module it lives in; only a package's __init__ (its public
    # surface) gathers names from its modules
    stray = {}
    for name, path in _modules().items():
        if path.name == "__init__.py" or name in _REEXPORTS_LEFT:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        foreign = sorted(set(_all(tree)) - _defined(tree))
        if foreign:
            stray[name] = foreign
    assert stray == {}, f"__all__ names defined elsewhere (re-exports): {stray}"
