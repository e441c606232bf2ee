"""The operator's pure core: API objects -> Problem, Plan -> desired API state."""

from __future__ import annotations

from stowplan import api, placement
from stowplan.operator import inventory, reconcile

SPEC = {
    "model": {"uri": "file:///m/a.onnx"},
    "replicas": 2,
    "slo": {"latencyMs": 50, "targetQPS": 400},
    "profile": {
        "latencyMs": {"base": 2, "perItem": 0.5},
        "memoryMiB": {"weights": 1000, "perItem": 10},
        "maxBatch": 64,
    },
}


def model(name="a", ns="ns", replicas=2, status=None, generation=1) -> api.InferenceModel:
    return api.InferenceModel.model_validate(
        {
            "metadata": {"name": name, "namespace": ns, "generation": generation},
            "spec": {**SPEC, "replicas": replicas},
            "status": status,
        }
    )


def node(name, gpus=1, assignments=(), models=()) -> api.GPUNode:
    return api.GPUNode.model_validate(
        {
            "metadata": {"name": name, "labels": {"zone": "z1"}},
            "spec": {"assignments": list(assignments)},
            "status": {
                "gpus": [{"index": i, "memoryTotalMiB": 16384, "name": "T4"} for i in range(gpus)],
                "models": list(models),
            }
            if gpus
            else None,
        }
    )


def test_nodes_without_reported_gpus_contribute_nothing():
    problem = inventory.problem([model()], [node("a", gpus=0), node("b", gpus=2)])
    assert [(g.node, g.index) for g in problem.gpus] == [("b", 0), ("b", 1)]
    assert problem.gpus[0].labels == {"zone": "z1"}
    assert problem.models[0].name == "ns/a"
    # 400 qps over 2 replicas is the engine's job; the demand carries the totals
    assert problem.models[0].target_qps == 400 and problem.models[0].replicas == 2


def _assignment(model_key, replica, gpu=0):
    return {
        "model": model_key, "replica": replica, "gpu": gpu,
        "source": {"uri": "file:///m/a.onnx"}, "batchSize": 4, "maxBatch": 64,
        "dutyCycleMs": 20, "busyMs": 4, "memoryMiB": 1040, "sloMs": 50,
    }  # fmt: skip


def test_current_placement_drops_deleted_models_and_scaled_away_replicas():
    nodes = [
        node("a", gpus=1, assignments=[_assignment("ns/a", 0), _assignment("ns/gone", 0)]),
        node("b", gpus=1, assignments=[_assignment("ns/a", 1)]),
    ]
    problem = inventory.problem([model(replicas=1)], nodes)
    assert [(a.model, a.replica, a.node) for a in problem.current] == [("ns/a", 0, "a")]


def _plan(problem):
    result = placement.plan(problem)
    assert placement.check_plan(problem, result) == []
    return result


def test_desired_state_places_replicas_and_reports_capacity():
    models, nodes = [model()], [node("a"), node("b")]
    problem = inventory.problem(models, nodes)
    desired = reconcile.desired_state(models, nodes, _plan(problem), now="2026-01-01T00:00:00Z")
    status = desired.model_status["ns/a"]
    assert status.replicas == 2 and status.ready_replicas == 0
    assert {p.node for p in status.placements} == {"a", "b"}  # distinct GPUs
    assert [c.type for c in status.conditions] == ["Placed", "Ready", "SLOAttained"]
    assert status.conditions[0].status == api.ConditionStatus.TRUE
    assert status.capacity is not None and status.capacity.per_replica_qps == 200
    # the share shown is the time the batch takes per cycle
    assert status.capacity.gpu_share == round(
        status.capacity.busy_ms / status.capacity.duty_cycle_ms, 6
    )
    assert sum(len(v) for v in desired.node_assignments.values()) == 2
    assert [e.reason for e in desired.events] == ["Placed"]


def test_unchanged_conditions_keep_their_transition_time_and_emit_no_events():
    models, nodes = [model()], [node("a"), node("b")]
    problem = inventory.problem(models, nodes)
    first = reconcile.desired_state(models, nodes, _plan(problem), now="2026-01-01T00:00:00Z")
    stored = model(status=first.model_status["ns/a"].wire())
    again = reconcile.desired_state([stored], nodes, _plan(problem), now="2026-02-02T00:00:00Z")
    assert again.model_status["ns/a"] == stored.status  # nothing to write
    assert again.events == []


def test_ready_replicas_and_slo_come_from_agent_observations():
    models = [model(replicas=1)]
    nodes = [node("a")]
    plan = _plan(inventory.problem(models, nodes))
    seen = {"model": "ns/a", "replica": 0, "gpu": 0, "state": "Ready", "qps": 190.0,
            "p99Ms": 61.0, "batchSize": 3.5}  # fmt: skip
    nodes = [node("a", models=[seen])]
    status = reconcile.desired_state(models, nodes, plan).model_status["ns/a"]
    assert status.ready_replicas == 1
    assert status.observed is not None and status.observed.p99_ms == 61.0
    conditions = {c.type: c for c in status.conditions}
    assert conditions["Ready"].status == api.ConditionStatus.TRUE
    # p99 61 ms > SLO 50 ms
    assert conditions["SLOAttained"].status == api.ConditionStatus.FALSE


def test_unplaceable_replica_is_a_condition_and_a_warning():
    profile = {**SPEC["profile"], "memoryMiB": {"weights": 10**6, "perItem": 0}}
    big = api.InferenceModel.model_validate(
        {
            "metadata": {"name": "big", "namespace": "ns", "generation": 1},
            "spec": {**SPEC, "profile": profile},
        }
    )
    nodes = [node("a")]
    plan = _plan(inventory.problem([big], nodes))
    desired = reconcile.desired_state([big], nodes, plan)
    status = desired.model_status["ns/big"]
    assert status.conditions[0].status == api.ConditionStatus.FALSE
    assert status.conditions[0].reason == "MemoryExceedsEveryGPU"
    assert [e.type for e in desired.events] == ["Warning"]


def test_a_node_whose_agent_went_silent_offers_no_gpus():
    from datetime import UTC, datetime

    fresh, silent = node("fresh"), node("silent")
    fresh = fresh.model_copy(
        update={"status": fresh.status.model_copy(update={"heartbeat": "2026-01-01T00:09:30Z"})}
    )
    silent = silent.model_copy(
        update={"status": silent.status.model_copy(update={"heartbeat": "2026-01-01T00:00:00Z"})}
    )
    now = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    # 30 s and 600 s since the last heartbeat; the limit is 120 s
    problem = inventory.problem([model()], [fresh, silent], now=now, stale_after_s=120)
    assert {g.node for g in problem.gpus} == {"fresh"}
