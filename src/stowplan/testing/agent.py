"""Shared builders for the agent's tests: the example agent (an MLP with AIMD batching, a
convnet with batching off, and one model whose file does not exist, on a simulated device),
Open Inference Protocol request bodies for the example MLP, a gate that holds a model's device
busy, and a reader of one Prometheus sample.

Callers: tests/agent (conftest and the protocol tests), and later conformance tests with real
clients. Builds real objects (real ONNX Runtime sessions); fakes nothing. Never imported by
product code.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from stowplan.agent.batching import FixedPolicy
from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig, Policy
from stowplan.agent.serving import Agent

#: the example MLP's input width (``stowplan.models``' mlp.onnx takes [N, 64] FP32)
MLP_INPUT_WIDTH = 64


def example_agent(model_dir: Path, cache_dir: Path, max_body_bytes: int = 64 * 1024) -> Agent:
    """An Agent serving ``mlp`` (AIMD, 2 ms queue delay), ``convnet`` (no batching) and
    ``broken`` (Failed: its file does not exist) from ``model_dir`` (built by
    :func:`stowplan.models.build_all`). The caller closes it."""
    a = Agent(AgentSettings(cache_dir=cache_dir, max_body_bytes=max_body_bytes, intra_op_threads=1))
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
    return a


def mlp_request(rows: int = 1, seed: int = 0) -> dict[str, Any]:
    """An OIP JSON inference body for the example MLP: ``rows`` seeded standard-normal rows."""
    x = np.random.default_rng(seed).standard_normal((rows, MLP_INPUT_WIDTH)).astype(np.float32)
    return {
        "id": "r1",
        "inputs": [
            {
                "name": "input",
                "shape": [rows, MLP_INPUT_WIDTH],
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
    }


def hold_device(agent: Agent, model: str, max_hold_s: float = 5.0) -> threading.Event:
    """Occupy ``model``'s device with another lane's batch until the returned event is set (or
    ``max_hold_s`` passes), so that requests to it queue."""
    gate, started = threading.Event(), threading.Event()

    def slow(batch: list[object]) -> list[object]:
        started.set()
        gate.wait(max_hold_s)
        return list(batch)

    ex = agent.executor(agent.get(model).config.device)
    ex.add_lane("gate", FixedPolicy(1, 0.0), slo_ms=600_000, run=slow)
    ex.submit("gate", None)
    assert started.wait(5.0)
    return gate


def metric_value(agent: Agent, line_start: str) -> float:
    """The value of the first sample of the agent's metrics whose line starts with
    ``line_start`` (0 when there is none)."""
    for line in agent.metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


__all__ = ["MLP_INPUT_WIDTH", "example_agent", "hold_device", "metric_value", "mlp_request"]
