"""Placement's memory numbers and the agent's residency pool agree, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from stowplan import standalone
from stowplan.agent.config import AgentSettings
from stowplan.agent.gpunode_sync import desired_configs
from stowplan.agent.registry import reserved_bytes
from stowplan.api.gpunode import GPUNodeSpec

MIB = 1024 * 1024
EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


def test_cluster_assignment_reserves_exactly_the_planned_memory():
    spec = GPUNodeSpec.model_validate(
        {
            "assignments": [
                {
                    "model": "ns/m", "replica": 0, "gpu": 0, "source": {"uri": "file:///m.onnx"},
                    "batchSize": 3, "maxBatch": 16, "dutyCycleMs": 20, "busyMs": 4,
                    # 200 MiB weights + 3 items x 10 MiB = 230 MiB planned
                    "memoryMiB": 230, "weightsMiB": 200, "sloMs": 50,
                }
            ]
        }
    )  # fmt: skip
    ((config, _),) = desired_configs(spec).values()
    weights, workspace = reserved_bytes(config, file_size_bytes=12_345)
    assert weights == 200 * MIB and weights + workspace == 230 * MIB


def test_without_a_plan_the_file_size_and_largest_batch_are_reserved():
    from stowplan.agent.config import ModelConfig

    config = ModelConfig(name="m", uri="/m.onnx", max_batch=8, per_item_memory_mib=2)
    assert reserved_bytes(config, file_size_bytes=1000) == (1000, 16 * MIB)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="manifests/examples not present")
def test_standalone_pool_holds_what_placement_planned(tmp_path: Path):
    dep = standalone.up(EXAMPLES, AgentSettings(cache_dir=tmp_path), use_nvml=False)
    try:
        for device in {a.gpu for a in dep.plan.assignments}:
            planned = sum(a.memory_mib for a in dep.plan.assignments if a.gpu == device)
            pool = dep.agent.residency(device)
            assert pool is not None
            reserved = sum(r.weights_bytes + r.workspace_bytes for r in pool.snapshot())
            # one residency entry per served model and device; a model's replicas on one
            # device share it, and the examples place at most one replica per device
            assert reserved == pytest.approx(planned * MIB, abs=MIB), device
    finally:
        dep.agent.close()
