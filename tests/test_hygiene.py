"""Guards against the `operator` stdlib-shadowing trap and other layout mistakes."""

from __future__ import annotations
import __future__

import importlib
import operator
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "stowplan"


def test_stdlib_operator_is_not_shadowed():
    assert hasattr(operator, "add") and hasattr(operator, "itemgetter")
    assert sys.modules["operator"] is operator
    assert "stowplan" not in (getattr(operator, "__file__", "") or "")


def test_stdlib_operator_wins_from_the_repo_root_in_a_fresh_interpreter():
    # `python -c` puts the current directory (the repo root, with its operator/ folder) first
    code = "import operator, collections, dataclasses; print(operator.add(1, 2))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "3"


@pytest.mark.parametrize("folder", ["tests", "operator", "placement", "agent"])
def test_no_init_py_in_tests_or_component_folders(folder):
    assert not list((REPO / folder).rglob("__init__.py"))


def test_no_module_is_named_like_a_stdlib_module():
    clashes = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.stem in sys.stdlib_module_names and p.parent.name != "stowplan"
    ]
    # the `operator` subpackage is the one deliberate, safe exception (src layout)
    assert clashes == [], clashes


def _packages() -> list[str]:
    return sorted(
        "stowplan." + ".".join(init.parent.relative_to(SRC).parts)
        for init in SRC.rglob("__init__.py")
        if init.parent != SRC
    )


@pytest.mark.parametrize("package", _packages())
def test_public_surface_is_exactly_all(package):
    # httpx's test_exported_members: a package's __all__ lists exactly its public names (the
    # submodules it names aside), so nothing public hides outside it and nothing in it is stale
    module = importlib.import_module(package)
    names = list(getattr(module, "__all__", []))
    assert len(names) == len(set(names))  # the order is ruff's (RUF022)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }
    declared = {n for n in names if not isinstance(getattr(module, n, None), types.ModuleType)}
    assert declared == public, f"{package}: missing {public - declared}, stale {declared - public}"
    assert all(hasattr(module, n) for n in names)


def test_every_module_starts_with_a_docstring():
    missing = []
    for path in SRC.rglob("*.py"):
        text = path.read_text().lstrip()
        if text and not text.startswith(('"""', "'''", 'r"""')):
            missing.append(str(path.relative_to(SRC)))
    assert missing == [], missing
