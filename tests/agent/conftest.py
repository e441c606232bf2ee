"""Fixtures for the agent tests: example ONNX models built once per session, the example Agent
(:func:`stowplan.testing.agent.example_agent`) serving them on a simulated device, and a
FastAPI TestClient in front of it; and the ``fresh_process`` marker, which runs a test alone
in a new interpreter (what it measures, such as the process's resident memory, would otherwise
carry what earlier tests left in the heap and in ONNX Runtime's one per-process environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stowplan.agent.server import create_app
from stowplan.agent.serving import Agent
from stowplan.models import build_all
from stowplan.testing.agent import example_agent

_FRESH = "STOWPLAN_TEST_IN_FRESH_PROCESS"


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a ``fresh_process`` test in a new interpreter (and nothing else there)."""
    if pyfuncitem.get_closest_marker("fresh_process") is None or os.environ.get(_FRESH) == "1":
        return None
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid]
    env = {**os.environ, _FRESH: "1"}
    r = subprocess.run(
        cmd, cwd=pyfuncitem.config.rootpath, env=env, capture_output=True, text=True, timeout=280
    )
    if r.returncode != 0:
        pytest.fail(f"in a fresh interpreter ({' '.join(cmd)}):\n{r.stdout[-6000:]}", False)
    return True


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    build_all(path)
    return path


@pytest.fixture
def agent(model_dir: Path, tmp_path: Path) -> Iterator[Agent]:
    a = example_agent(model_dir, tmp_path / "cache")
    yield a
    a.close()


@pytest.fixture
def client(agent: Agent) -> Iterator[TestClient]:
    with TestClient(create_app(agent)) as c:
        yield c
