"""Fixtures for the agent tests: example ONNX models built once per session, the example Agent
(:func:`stowplan.testing.agent.example_agent`) serving them on a simulated device, and a
FastAPI TestClient in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stowplan.agent.server import create_app
from stowplan.agent.serving import Agent
from stowplan.models import build_all
from stowplan.testing.agent import example_agent


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
