"""Fixtures for the agent tests: example ONNX models built once per session, an Agent serving
them on a simulated device, and a FastAPI TestClient in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig, Policy
from stowplan.agent.server import create_app
from stowplan.agent.serving import Agent
from stowplan.models import build_all


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    build_all(path)
    return path


@pytest.fixture
def agent(model_dir: Path, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(
        AgentSettings(cache_dir=tmp_path / "cache", max_body_bytes=64 * 1024, intra_op_threads=1)
    )
    a.load(
        ModelConfig(
            name="mlp",
            uri=f"file://{model_dir / 'mlp.onnx'}",
            slo_ms=2000,
            max_batch=16,
            batching=BatchingConfig(max_queue_delay_ms=2),
        )
    )
    a.load(
        ModelConfig(
            name="convnet",
            uri=str(model_dir / "convnet.onnx"),
            slo_ms=2000,
            max_batch=8,
            batching=BatchingConfig(policy=Policy.NONE),
        )
    )
    a.load(ModelConfig(name="broken", uri="file:///nonexistent/model.onnx"))
    yield a
    a.close()


@pytest.fixture
def client(agent: Agent) -> Iterator[TestClient]:
    with TestClient(create_app(agent)) as c:
        yield c
