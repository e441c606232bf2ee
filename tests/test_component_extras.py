"""Each component's image installs only its own extra: a fresh venv with ``.[agent]`` (or
``.[operator]``) resolves without the other components' heavy dependencies, and every module of
that component imports there. Slow (two real pip installs, from the pip cache when warm)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# every module of the package imports, and none of the forbidden distributions is installed
PROBE = """
import importlib, importlib.util, pkgutil, sys
package, forbidden = sys.argv[1], sys.argv[2].split(",")
present = [name for name in forbidden if importlib.util.find_spec(name) is not None]
assert not present, f"installed but not needed: {present}"
root = importlib.import_module(package)
names = [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
for name in names:
    importlib.import_module(name)
print(len(names) + 1)
"""

CASES = {
    "agent": ("stowplan.agent", ["ortools", "kopf", "numba", "matplotlib"]),
    "operator": ("stowplan.operator", ["onnxruntime", "fastapi", "uvicorn", "matplotlib"]),
}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("extra", sorted(CASES))
def test_component_imports_with_only_its_own_extra(extra, tmp_path):
    package, forbidden = CASES[extra]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{REPO}[{extra}]"],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run(
        [str(python), "-c", PROBE, package, ",".join(forbidden)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert int(probe.stdout.split()[-1]) > 3  # the package and its modules really loaded
    assert sys.version_info >= (3, 11)
