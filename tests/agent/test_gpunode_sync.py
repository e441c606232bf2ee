"""Cluster mode without a cluster: GPUNode registration, applying assignments (load, reload,
unload) and the status the agent writes, against an in-memory CustomObjectsApi double."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stowplan.agent.config import AgentSettings
from stowplan.agent.gpunode_sync import (
    GpuNodeSync,
    allocatable,
    build_status,
    desired_configs,
    reconcile,
    session_threads,
)
from stowplan.agent.serving import Agent
from stowplan.agent.telemetry import SimulatedTelemetry
from stowplan.api.gpunode import GPUNodeSpec, GPUNodeStatus
from stowplan.api.inferencemodel import ResourceQuantities
from stowplan.testing.kube import FakeCustomObjects


def _assignment(
    model: str, uri: str, replica: int = 0, gpu: int = 0, **extra: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "replica": replica,
        "gpu": gpu,
        "source": {"uri": uri},
        "batchSize": 4,
        "maxBatch": 16,
        "dutyCycleMs": 20,
        "busyMs": 5,
        "memoryMiB": 100,
        "sloMs": 100,
        **extra,
    }


def test_desired_configs_and_reconcile(model_dir: Path) -> None:
    mlp = f"file://{model_dir / 'mlp.onnx'}"
    spec = GPUNodeSpec.model_validate(
        {
            "assignments": [
                _assignment("default/a", mlp),
                _assignment("default/b", mlp, replica=1, gpu=1, busyMs=7),
                _assignment("default/b", mlp, replica=0),
            ]
        }
    )
    desired = desired_configs(spec)
    assert sorted(desired) == ["default.a", "default.b"]  # replicas of b share one name
    cfg, group = desired["default.b"]
    assert [a.replica for a in group] == [0, 1]
    assert (cfg.device, cfg.duty_cycle_ms, cfg.busy_ms, cfg.slo_ms) == (0, 20, 5, 100)
    assert [(r.device, r.busy_ms) for r in cfg.replicas] == [(1, 7)]
    current = {"default.a": desired["default.a"][0], "gone": cfg}
    load, unload = reconcile(current, [c for c, _ in desired.values()])
    assert [c.name for c in load] == ["default.b"]
    assert unload == ["gone"]


def test_two_replicas_on_one_node_serve_under_one_name(sync_agent: Agent, model_dir: Path) -> None:
    mlp = str(model_dir / "mlp.onnx")
    sync = GpuNodeSync(sync_agent, FakeCustomObjects(), "n", "http://x")
    sync.apply(
        {
            "spec": {
                "assignments": [
                    _assignment("ns/m", mlp, replica=0, gpu=0),
                    _assignment("ns/m", mlp, replica=1, gpu=1),
                ]
            }
        }
    )
    assert sorted(sync_agent.models["ns.m"].lanes) == [0, 1]
    status = sync.report()
    assert [(m.replica, m.gpu, m.state) for m in status.models] == [
        (0, 0, "Ready"),
        (1, 1, "Ready"),
    ]


@pytest.fixture
def sync_agent(tmp_path: Path) -> Any:
    agent = Agent(AgentSettings(cache_dir=tmp_path), SimulatedTelemetry(2))
    yield agent
    agent.close()


def test_register_apply_and_report(sync_agent: Agent, model_dir: Path) -> None:
    api = FakeCustomObjects()
    sync = GpuNodeSync(
        sync_agent, api, "gpu-node-1", "http://10.0.0.5:8000", node_labels=lambda: {"gpu": "a100"}
    )
    obj = sync.register()
    assert api.objects["gpu-node-1"]["metadata"]["labels"] == {"gpu": "a100"}
    assert sync.register() is obj  # idempotent: an existing object is left alone

    mlp = f"file://{model_dir / 'mlp.onnx'}"
    obj = {
        **obj,
        "spec": {
            "assignments": [
                _assignment("ns/good", mlp),
                _assignment("ns/bad", "file:///missing.onnx", gpu=1),
            ]
        },
    }
    sync.apply(obj)
    assert sync_agent.models["ns.good"].state.value == "Ready"
    assert sync_agent.models["ns.bad"].state.value == "Failed"

    status = sync.report()
    wire = api.status_patches[-1]["status"]
    GPUNodeStatus.model_validate(wire)  # what we write is a valid status
    assert status.gpu_count == 2 and all(g.simulated for g in status.gpus)
    states = {(m.model, m.state) for m in status.models}
    assert states == {("ns/good", "Ready"), ("ns/bad", "Failed")}
    assert status.ready_models == 1 and status.conditions[0].status == "False"
    assert status.heartbeat and status.endpoint == "http://10.0.0.5:8000"

    # the operator moves "good" away: it is unloaded; "bad" stays as is
    sync.apply({"spec": {"assignments": [_assignment("ns/bad", "file:///missing.onnx", gpu=1)]}})
    assert "ns.good" not in sync_agent.models and "ns.bad" in sync_agent.models


def test_status_reports_observed_stats(sync_agent: Agent, model_dir: Path) -> None:
    sync = GpuNodeSync(sync_agent, FakeCustomObjects(), "n", "http://x")
    sync.apply({"spec": {"assignments": [_assignment("ns/m", str(model_dir / "mlp.onnx"))]}})
    served = sync_agent.models["ns.m"]
    for ms in (10.0, 20.0, 30.0):
        served.stats.request(ms)
    served.stats.batch(3)
    status = build_status(
        sync_agent, sync.assignments, sync_agent.device_samples(), "u", now="2026-01-01T00:00:00Z"
    )
    (m,) = status.models
    assert m.qps > 0 and m.p99_ms == pytest.approx(29.8) and m.batch_size == 3
    assert status.heartbeat == "2026-01-01T00:00:00Z"


def test_condition_transition_time_moves_only_on_change(sync_agent: Agent) -> None:
    first = build_status(sync_agent, {}, [], "u", now="2026-01-01T00:00:00Z")
    later = build_status(
        sync_agent, {}, [], "u", now="2026-01-01T00:05:00Z", previous=first.conditions[0]
    )
    assert later.conditions[0].last_transition_time == "2026-01-01T00:00:00Z"
    assert later.heartbeat == "2026-01-01T00:05:00Z"


def test_unparseable_spec_is_ignored(sync_agent: Agent, model_dir: Path) -> None:
    sync = GpuNodeSync(sync_agent, FakeCustomObjects(), "n", "http://x")
    sync.apply({"spec": {"assignments": [_assignment("ns/m", str(model_dir / "mlp.onnx"))]}})
    sync.apply({"spec": {"assignments": [{"model": "ns/m"}]}})  # missing fields: ignored
    assert sync_agent.models["ns.m"].state.value == "Ready" and "ns.m" in sync.assignments


def test_example_models_are_built_on_the_node(sync_agent: Agent, tmp_path: Path) -> None:
    sync = GpuNodeSync(sync_agent, FakeCustomObjects(), "n", "http://x", cache_dir=tmp_path)
    sync.apply({"spec": {"assignments": [_assignment("ns/m", "file://models/convnet.onnx")]}})
    assert sync_agent.models["ns.m"].state.value == "Ready"
    assert (tmp_path / "examples" / "convnet.onnx").is_file()


def test_allocatable_is_the_limits_less_the_reserve() -> None:
    # the downward API hands limits.cpu in milli (divisor 1m) and limits.memory in bytes
    assert allocatable("8000m", "34359738368", "500m", "1Gi") == ResourceQuantities(
        cpu="7500m", memory="31Gi"
    )
    assert allocatable("4", None) == ResourceQuantities(cpu="4", memory=None)
    assert allocatable(None, "1G") == ResourceQuantities(cpu=None, memory="953Mi")  # rounds down
    assert allocatable("250m", "512Mi", "1", "1Gi") == ResourceQuantities(cpu="0", memory="0Mi")
    assert allocatable(None, None, "1", "1Gi") is None  # no budget given: no limit
    with pytest.raises(ValueError, match="lots"):
        allocatable("lots", None)


def test_session_threads_follow_the_cpu_budget() -> None:
    # 7.5 CPUs offered: 7 whole ones; a quarter CPU still gets one thread; no budget: ORT's own
    assert session_threads(allocatable("8000m", None, "500m")) == 7
    assert session_threads(allocatable("250m", "1Gi")) == 1
    assert session_threads(allocatable(None, "1Gi")) == 0
    assert session_threads(None) == 0


def test_status_reports_allocatable_and_clears_it_when_unset(sync_agent: Agent) -> None:
    api = FakeCustomObjects()
    offered = allocatable("2", "8Gi", "500m", None)
    sync = GpuNodeSync(sync_agent, api, "n", "http://x", offered=offered)
    status = sync.report()
    assert status.allocatable == ResourceQuantities(cpu="1500m", memory="8Gi")
    wire = api.status_patches[-1]["status"]
    assert wire["allocatable"] == {"cpu": "1500m", "memory": "8Gi"}
    assert GPUNodeStatus.model_validate(wire).allocatable == status.allocatable

    # restarted with memory only, then with no budget: the merge patch must delete what is gone
    GpuNodeSync(sync_agent, api, "n", "http://x", offered=allocatable(None, "8Gi")).report()
    assert api.status_patches[-1]["status"]["allocatable"] == {"cpu": None, "memory": "8Gi"}
    GpuNodeSync(sync_agent, api, "n", "http://x").report()
    assert api.status_patches[-1]["status"]["allocatable"] is None
