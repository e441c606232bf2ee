"""CPU and host-memory requests through the operator's pure path: InferenceModel and GPUNode
objects -> inventory.problem -> placement.plan -> check_plan -> desired status and events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from stowplan import api, placement
from stowplan.operator import inventory, reconcile

T4 = {"memoryTotalMiB": 16384, "name": "T4"}


def model(
    name: str = "a", replicas: int = 2, requests: dict[str, Any] | None = None
) -> api.InferenceModel:
    spec: dict[str, Any] = {
        "model": {"uri": "file:///m/a.onnx"},
        "replicas": replicas,
        "slo": {"latencyMs": 50, "targetQPS": 40 * replicas},
        "profile": {
            "latencyMs": {"base": 2, "perItem": 0.5},
            "memoryMiB": {"weights": 1000, "perItem": 10},
            "maxBatch": 64,
        },
    }
    if requests is not None:
        spec["resources"] = {"requests": requests}
    return api.InferenceModel.model_validate(
        {"metadata": {"name": name, "namespace": "ns", "generation": 1}, "spec": spec}
    )


def node(
    name: str,
    gpus: int = 1,
    allocatable: dict[str, Any] | None = None,
    assignments: list[dict[str, Any]] | None = None,
    heartbeat: str | None = None,
) -> api.GPUNode:
    status: dict[str, Any] = {"gpus": [{"index": i, **T4} for i in range(gpus)]}
    if allocatable is not None:
        status["allocatable"] = allocatable
    if heartbeat is not None:
        status["heartbeat"] = heartbeat
    return api.GPUNode.model_validate(
        {"metadata": {"name": name}, "spec": {"assignments": assignments or []}, "status": status}
    )


def test_without_the_fields_the_problem_is_exactly_what_it_was():
    problem = inventory.problem([model("a"), model("b", replicas=1)], [node("n1", gpus=2)])
    gpus = tuple(
        placement.Gpu(node="n1", index=i, memory_mib=16384, gpu_type="T4") for i in range(2)
    )
    models = tuple(
        placement.ModelDemand(
            name=f"ns/{name}",
            replicas=replicas,
            slo_ms=50,
            target_qps=40 * replicas,
            latency=placement.LatencyProfile(base_ms=2, per_item_ms=0.5),
            memory=placement.MemoryProfile(weights_mib=1000, per_item_mib=10),
            max_batch=64,
            max_queue_delay_ms=5.0,  # spec.batching's default batch-fill bound
        )
        for name, replicas in (("a", 2), ("b", 1))
    )
    assert problem == placement.Problem(gpus=gpus, models=models)
    # requests without any node reporting allocatable: still no limit anywhere
    limited = inventory.problem([model("a", requests={"cpu": "64"})], [node("n1", gpus=2)])
    assert limited.nodes == () and limited.models[0].cpu_milli == 64_000


def test_requests_round_up_and_allocatable_rounds_down():
    problem = inventory.problem(
        [model("a", requests={"cpu": "1.5", "memory": "1G"}), model("b", requests={"cpu": 2})],
        [
            node("n1", allocatable={"cpu": "3500m", "memory": "2G"}),
            node("n2", allocatable={"cpu": "8"}),  # memory left out: no memory limit
            node("n3", allocatable={}),  # nothing reported: no limit at all
            node("n4"),
            node("n5", gpus=0, allocatable={"cpu": "1"}),  # no GPUs: nothing to limit
        ],
    )
    a, b = problem.models
    assert (a.cpu_milli, a.host_memory_mib) == (1500, 954)  # 10**9 B = 953.7 MiB -> 954
    assert (b.cpu_milli, b.host_memory_mib) == (2000, 0)
    assert problem.nodes == (
        placement.NodeResources(node="n1", cpu_milli=3500, memory_mib=1907),  # 1907.3 -> 1907
        placement.NodeResources(node="n2", cpu_milli=8000, memory_mib=inventory.NO_LIMIT),
    )


def test_a_stale_node_offers_neither_gpus_nor_resources():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    problem = inventory.problem(
        [model()],
        [
            node("old", allocatable={"cpu": "4"}, heartbeat="2026-01-01T11:00:00Z"),
            node("new", allocatable={"cpu": "4"}, heartbeat="2026-01-01T11:59:50Z"),
        ],
        now=now,
        stale_after_s=60,
    )
    assert {g.node for g in problem.gpus} == {"new"}
    assert [n.node for n in problem.nodes] == ["new"]


def _plan(models: list[api.InferenceModel], nodes: list[api.GPUNode]) -> placement.Plan:
    problem = inventory.problem(models, nodes)
    plan = placement.plan(problem)
    assert placement.check_plan(problem, plan) == []
    return plan


def test_cpu_bound_node_places_two_and_reports_the_third_waiting_for_capacity():
    """3 GPUs, 1 CPU: two replicas of 400m fit (800m), the third would fit an EMPTY node, so
    it waits for capacity (NoCapacity: a new node helps), not ResourcesExceedEveryNode."""
    im = model("a", replicas=3, requests={"cpu": "400m"})
    nodes = [node("n1", gpus=3, allocatable={"cpu": "1", "memory": "64Gi"})]
    plan = _plan([im], nodes)
    assert len(plan.assignments) == 2 and {a.node for a in plan.assignments} == {"n1"}
    assert [u.reason for u in plan.unplaced] == [placement.UnplacedReason.NO_CAPACITY]

    desired = reconcile.desired_state([im], nodes, plan, now="2026-01-01T00:00:00Z")
    status = desired.model_status["ns/a"]
    placed = next(c for c in status.conditions if c.type == "Placed")
    assert (placed.status, placed.reason) == (api.ConditionStatus.FALSE, "NoCapacity")
    assert status.replicas == 2 and [u.reason for u in status.unplaced] == ["NoCapacity"]
    assert any(e.type == "Warning" and "NoCapacity" in e.message for e in desired.events)

    # the same fleet without the requests: all three fit, one per GPU
    assert _plan([model("a", replicas=3)], nodes).unplaced == ()


def test_a_replica_larger_than_every_node_is_resources_exceed_every_node():
    big = model("big", replicas=1, requests={"cpu": "2", "memory": "1Gi"})
    fat = model("fat", replicas=1, requests={"memory": "100Gi"})
    small = model("small", replicas=1, requests={"cpu": "500m"})
    nodes = [
        node("n1", gpus=2, allocatable={"cpu": "1", "memory": "64Gi"}),
        node("n2", gpus=1, allocatable={"cpu": "1500m", "memory": "64Gi"}),
    ]
    plan = _plan([big, fat, small], nodes)
    reasons = {u.model: u.reason.value for u in plan.unplaced}
    assert reasons == {"ns/big": "ResourcesExceedEveryNode", "ns/fat": "ResourcesExceedEveryNode"}
    assert [a.model for a in plan.assignments] == ["ns/small"]

    desired = reconcile.desired_state([big, fat, small], nodes, plan, now="2026-01-01T00:00:00Z")
    for key in ("ns/big", "ns/fat"):
        status = desired.model_status[key]
        placed = next(c for c in status.conditions if c.type == "Placed")
        assert placed.reason == "ResourcesExceedEveryNode", placed
        assert status.unplaced[0].message  # says which resource is short
    warnings = [e for e in desired.events if e.type == "Warning"]
    assert {e.name for e in warnings} == {"big", "fat"}
    assert all("ResourcesExceedEveryNode" in e.message for e in warnings)


def _assignment(model_key: str, replica: int, gpu: int) -> dict[str, Any]:
    return {
        "model": model_key, "replica": replica, "gpu": gpu,
        "source": {"uri": "file:///m/a.onnx"}, "batchSize": 1, "maxBatch": 64,
        "dutyCycleMs": 20, "busyMs": 2.5, "memoryMiB": 1010, "sloMs": 50,
    }  # fmt: skip


def test_allocatable_shrinking_under_running_replicas_gives_a_valid_plan():
    """The agent's limit went down (a smaller container): the running placement no longer
    fits the node's CPU; the re-plan must still pass check_plan (else the operator would
    refuse every plan) and move or unplace what does not fit."""
    im = model("a", replicas=3, requests={"cpu": "1"})
    running = [_assignment("ns/a", r, gpu=r) for r in range(3)]
    before = [node("n1", gpus=3, allocatable={"cpu": "4"}, assignments=running)]
    assert _plan([im], before).unplaced == ()
    after = [
        node("n1", gpus=3, allocatable={"cpu": "2"}, assignments=running),
        node("n2", gpus=1, allocatable={"cpu": "4"}),
    ]
    plan = _plan([im], after)
    per_node = {n: sum(a.node == n for a in plan.assignments) for n in ("n1", "n2")}
    assert per_node == {"n1": 2, "n2": 1}
