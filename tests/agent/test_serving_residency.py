"""The agent with the memory engineer's ResidencyManager plugged in: models are carved from a
per-device pool, idle ones are offloaded LRU when another needs room (and come back on their
next request), a model larger than the pool is Failed, and status shows Offloaded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from stowplan.agent.config import AgentSettings, ModelConfig
from stowplan.agent.gpunode_sync import build_status
from stowplan.agent.protocol import InferenceRequest
from stowplan.agent.serving import Agent
from stowplan.agent.telemetry import SimulatedTelemetry
from stowplan.api.gpunode import GPUNodeSpec

MIB = 1024 * 1024


def _req(cols: int) -> InferenceRequest:
    return InferenceRequest.model_validate(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, cols],
                    "datatype": "FP32",
                    "data": np.zeros(cols, np.float32).tolist(),
                }
            ]
        }
    )


def test_lru_offload_and_prefetch_through_the_agent(model_dir: Path, tmp_path: Path) -> None:
    wide = (model_dir / "mlp-wide.onnx").stat().st_size  # ~9.4 MiB
    small = (model_dir / "mlp.onnx").stat().st_size  # ~0.3 MiB
    # pool fits mlp-wide or (mlp + a second mlp-sized model), never mlp-wide and mlp together
    pool = wide + small // 2
    telemetry = SimulatedTelemetry(1, memory_bytes=pool)
    agent = Agent(AgentSettings(cache_dir=tmp_path, memory_pool_fraction=1.0), telemetry)
    try:
        agent.load(ModelConfig(name="wide", uri=str(model_dir / "mlp-wide.onnx"), slo_ms=5000))
        agent.load(ModelConfig(name="small", uri=str(model_dir / "mlp.onnx"), slo_ms=5000))
        assert {m.name: m.state.value for m in agent.models.values()} == {
            "wide": "Ready",
            "small": "Ready",
        }

        async def go() -> None:
            await agent.infer("wide", _req(256))
            await agent.infer("small", _req(64))  # needs room: idle "wide" is offloaded

        asyncio.run(go())
        rows = {r["name"]: r for r in agent.model_rows()}
        assert rows["wide"]["resident"] is False and rows["small"]["resident"] is True
        # the memory moved, not only the books: wide's session is released, small's is built
        assert not agent.get("wide").runtime.loaded  # type: ignore[union-attr]
        assert agent.get("small").runtime.loaded  # type: ignore[union-attr]
        assert agent.get("wide").offloads == 1
        assert small <= agent.memory_used_bytes(0) < small + 512  # 256-byte alignment
        spec = GPUNodeSpec.model_validate(
            {
                "assignments": [
                    {
                        "model": "ns/wide",
                        "replica": 0,
                        "gpu": 0,
                        "source": {"uri": "file:///x"},
                        "batchSize": 1,
                        "maxBatch": 8,
                        "dutyCycleMs": 10,
                        "busyMs": 1,
                        "memoryMiB": 10,
                        "sloMs": 100,
                    }
                ]
            }
        )
        status = build_status(agent, {"wide": [spec.assignments[0]]}, agent.device_samples(), "u")
        assert status.models[0].state == "Offloaded"

        asyncio.run(agent.infer("wide", _req(256)))  # prefetched back on demand
        rows = {r["name"]: r for r in agent.model_rows()}
        assert rows["wide"]["resident"] is True and rows["small"]["resident"] is False
    finally:
        agent.close()


def test_model_larger_than_the_pool_is_failed(model_dir: Path, tmp_path: Path) -> None:
    telemetry = SimulatedTelemetry(1, memory_bytes=1 * MIB)
    agent = Agent(AgentSettings(cache_dir=tmp_path, memory_pool_fraction=1.0), telemetry)
    try:
        served = agent.load(ModelConfig(name="wide", uri=str(model_dir / "mlp-wide.onnx")))
        assert served.state.value == "Failed" and "device memory" in served.reason
        assert (
            agent.load(ModelConfig(name="small", uri=str(model_dir / "mlp.onnx"))).state.value
            == "Ready"
        )
    finally:
        agent.close()
