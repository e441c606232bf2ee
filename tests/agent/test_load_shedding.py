"""Load shedding on the real agent (real ONNX Runtime, real executor thread): real overload
still sheds, with a reason in the metrics and ``Retry-After`` on the 503; a lone request, even
one that waited past its deadline behind another model's batch, is answered, never refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig
from stowplan.agent.errors import Overloaded
from stowplan.agent.protocol import InferenceRequest
from stowplan.agent.serving import Agent
from stowplan.testing.agent import hold_device, metric_value, mlp_request


@pytest.fixture
def shed_agent(model_dir: Path, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(AgentSettings(cache_dir=tmp_path, intra_op_threads=1, max_queue_requests=6))
    a.load(
        ModelConfig(
            name="mlp",
            uri=f"file://{model_dir / 'mlp.onnx'}",
            slo_ms=50,
            max_batch=1,  # batches of one: five queued requests are a backlog
            batching=BatchingConfig(max_queue_delay_ms=0),
        )
    )
    yield a
    a.close()


async def test_real_overload_sheds_by_deadline_and_a_lone_request_is_answered(
    shed_agent: Agent,
) -> None:
    req = InferenceRequest.model_validate(mlp_request())
    gate = hold_device(shed_agent, "mlp")
    tasks = [asyncio.create_task(shed_agent.infer("mlp", req)) for _ in range(5)]
    await asyncio.sleep(0.2)  # they wait 200 ms behind the gate: four times their 50 ms SLO
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    shed = [r for r in results if isinstance(r, Overloaded)]
    assert len(shed) == 4 and all(r.reason == "deadline" for r in shed)
    assert sum(not isinstance(r, BaseException) for r in results) == 1  # the newest ran, late
    refused = 'stowplan_requests_refused_total{model="mlp",reason="deadline",version="1"}'
    assert metric_value(shed_agent, refused) == 4
    # a lone request that also waits past its deadline behind another model is still answered
    gate = hold_device(shed_agent, "mlp")
    lone = asyncio.create_task(shed_agent.infer("mlp", req))
    await asyncio.sleep(0.2)
    gate.set()
    assert (await lone).outputs
    assert metric_value(shed_agent, "stowplan_requests_refused_queue_empty_total") == 0


async def test_a_full_queue_sheds_with_its_reason(shed_agent: Agent) -> None:
    req = InferenceRequest.model_validate(mlp_request())
    gate = hold_device(shed_agent, "mlp")
    tasks = [asyncio.create_task(shed_agent.infer("mlp", req)) for _ in range(7)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    full = [r for r in results if isinstance(r, Overloaded) and r.reason == "queue_full"]
    assert len(full) == 1  # the queue holds 6
    refused = 'stowplan_requests_refused_total{model="mlp",reason="queue_full",version="1"}'
    assert metric_value(shed_agent, refused) == 1


def test_a_503_carries_retry_after(client: TestClient) -> None:
    r = client.post("/v2/models/broken/infer", json=mlp_request())  # a Failed model: 503
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1" and "error" in r.json()
    assert client.post("/v2/models/mlp/infer", json=mlp_request()).status_code == 200
    assert "retry-after" not in client.post("/v2/models/nope/infer", json=mlp_request()).headers
    text = client.get("/metrics").text
    assert 'stowplan_executor_wait_seconds_count{model="mlp",version="1"}' in text
