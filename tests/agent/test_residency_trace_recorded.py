"""A real agent (ONNX Runtime sessions on the CPU) records its pool's residency sequence and the
allocator lab replays the file (``stowplan memsim X.stwres.json``) to the agent's own offsets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from stowplan.agent.config import AgentSettings, ModelConfig
from stowplan.agent.memory import ResidencyManager
from stowplan.agent.protocol import InferenceRequest
from stowplan.agent.serving import Agent
from stowplan.agent.telemetry import SimulatedTelemetry
from stowplan.commands.memsim import command
from stowplan.memlab.pool import AGENT_POLICY
from stowplan.memlab.residency import load_residency


def _req(cols: int) -> InferenceRequest:
    data = np.ones(cols, np.float32).tolist()
    return InferenceRequest.model_validate(
        {"inputs": [{"name": "input", "shape": [1, cols], "datatype": "FP32", "data": data}]}
    )


def test_a_recorded_agent_trace_replays_in_the_lab_with_a_report_row(
    model_dir: Path, tmp_path: Path
) -> None:
    wide = model_dir / "mlp-wide.onnx"
    size = wide.stat().st_size
    out = tmp_path / "traces"
    agent = Agent(
        AgentSettings(
            cache_dir=tmp_path / "cache",
            memory_pool_fraction=1.0,
            intra_op_threads=1,
            residency_trace_dir=out,
        ),
        SimulatedTelemetry(1, memory_bytes=size + size // 2),  # one mlp-wide at a time
    )
    try:
        for name in ("a", "b"):
            agent.load(ModelConfig(name=name, uri=str(wide), slo_ms=10_000))
        for i in range(6):
            asyncio.run(agent.infer("ab"[i % 2], _req(256)))
        books = agent.residency(0)
        assert isinstance(books, ResidencyManager)
        stats = books.stats()
        offsets = {r.name: r.offset for r in books.snapshot()}
    finally:
        agent.close()
    path = out / "device-0.stwres.json"
    trace = load_residency(path)
    assert trace.pool_bytes == size + size // 2 and trace.policy == AGENT_POLICY
    assert sum(1 for r in trace.requests if r[0] == "acquire") == 6
    result = CliRunner().invoke(command, [str(path), "--json", "--allocator", "pytorch,bestfit"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["residency"]
    replayed = next(p for p in row["policies"] if p["policy"] == AGENT_POLICY)
    assert replayed["same_as_recorded"] is True
    assert (replayed["offloads"], replayed["prefetches"]) == (stats.offloads, stats.prefetches)
    assert stats.offloads == 5 and stats.prefetches == 4
    assert offsets == {"a": None, "b": 0}  # "b" was asked last: resident; "a" offloaded
    assert [r["allocator"] for r in row["results"]] == ["pytorch", "bestfit"]
    table = CliRunner().invoke(command, [str(path), "--allocator", "bestfit"])
    assert table.exit_code == 0, table.output
    assert "| bestfit-relocate (best) | 5 | 4 |" in table.output
    assert "| yes |" in table.output
