"""Placement prices each batching policy the way the agent runs it: ``none`` as batch-1 runs,
``static`` at its fixed size, ``aimd`` at the batch the duty cycle gives (issue 14)."""

from __future__ import annotations

import pytest

from stowplan import placement
from stowplan.placement.capacity import replica_capacity
from stowplan.placement.errors import InvalidProblem
from stowplan.placement.instances import plan_to_json, problem_from_json, problem_to_json
from stowplan.placement.models import (
    Assignment,
    BatchingPolicy,
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    Problem,
)
from stowplan.placement.verify import check_plan


def model(name, policy, size=0, qps=400.0, slo=50.0):
    return ModelDemand(
        name=name,
        replicas=1,
        slo_ms=slo,
        target_qps=qps,
        latency=LatencyProfile(base_ms=2.0, per_item_ms=0.5),
        memory=MemoryProfile(weights_mib=100, per_item_mib=1),
        max_batch=16,
        batching=policy,
        static_batch_size=size,
    )


@pytest.mark.parametrize(
    ("policy", "size", "d", "batch", "busy"),
    [
        # 400 qps * 40 ms = 16 requests per cycle
        (BatchingPolicy.AIMD, 0, 40.0, 16, 2 + 0.5 * 16),  # one batch of 16: 10 ms
        (BatchingPolicy.STATIC, 8, 40.0, 8, 2 * (2 + 0.5 * 8)),  # two batches of 8: 12 ms
        (BatchingPolicy.NONE, 0, 5.0, 1, 2 * (2 + 0.5)),  # 2 requests per 5 ms, 2 runs of 1
    ],
    ids=["aimd", "static", "none"],
)
def test_gpu_time_per_cycle_follows_the_policy(policy, size, d, batch, busy):
    cap = replica_capacity(model("m", policy, size, slo=100.0), d)
    assert cap is not None
    assert cap.batch_size == batch
    assert cap.busy_ms == pytest.approx(busy)


def test_a_none_model_is_not_planned_as_a_batch():
    # the example: 400 qps, base 2 ms, per item 0.5 ms; at batch 1 each request costs
    # 2.5 ms, so it needs 400 * 2.5 = 1,000 ms of GPU per second: the whole GPU, not 25 %
    m = model("solo", BatchingPolicy.NONE)
    assert replica_capacity(m, 40.0) is None  # 16 runs = 40 ms; 40 + 40 > 50 ms SLO
    problem = Problem(gpus=(Gpu(node="n", index=0, memory_mib=16_000),), models=(m,))
    plan = placement.plan(problem)
    assert check_plan(problem, plan) == []
    (a,) = plan.assignments
    assert a.batch_size == 1
    assert a.busy_ms / a.duty_cycle_ms == pytest.approx(1.0)


def test_the_verifier_refuses_a_none_model_planned_at_batch_16():
    m = model("solo", BatchingPolicy.NONE, qps=100.0, slo=100.0)
    problem = Problem(gpus=(Gpu(node="n", index=0, memory_mib=16_000),), models=(m,))
    # what the old plan said: one batch of 16 on a 160 ms cycle... (here 40 ms, 10 ms busy)
    wrong = placement.Plan(
        assignments=(
            Assignment(
                model="solo",
                replica=0,
                node="n",
                gpu=0,
                batch_size=4,
                duty_cycle_ms=40.0,
                busy_ms=4.0,
                memory_mib=104,
            ),
        ),
        gpus_used=1,
        lower_bound=1,
        solve_seconds=0.0,
    )
    codes = {v.code for v in check_plan(problem, wrong)}
    assert "Batch" in codes


def test_policies_share_a_gpu_within_the_cycle():
    models = (
        model("a", BatchingPolicy.AIMD, qps=200.0),
        model("s", BatchingPolicy.STATIC, 4, qps=100.0),
        model("n", BatchingPolicy.NONE, qps=50.0),
    )
    problem = Problem(
        gpus=(Gpu(node="n", index=i, memory_mib=16_000) for i in range(2)), models=models
    )
    plan = placement.plan(problem, time_limit_s=1.0)
    assert check_plan(problem, plan) == [] and plan.unplaced == ()
    by = {a.model: a for a in plan.assignments}
    assert by["n"].batch_size == 1 and by["s"].batch_size == 4


def test_instances_carry_the_policy_and_refuse_bad_ones():
    doc = {
        "gpus": [{"node": "n", "index": 0, "memory_mib": 16000}],
        "models": [
            {
                "name": "s",
                "replicas": 1,
                "slo_ms": 50,
                "target_qps": 100,
                "latency_ms": {"base": 2, "per_item": 0.5},
                "memory_mib": {"weights": 100, "per_item": 1},
                "max_batch": 16,
                "batching": {"policy": "static", "batch_size": 4},
            }
        ],
    }
    problem = problem_from_json(doc)
    assert problem.models[0].batching is BatchingPolicy.STATIC
    assert problem.models[0].static_batch_size == 4
    assert problem_from_json(problem_to_json(problem)) == problem
    out = plan_to_json(placement.plan(problem))
    assert {"batch_size", "duty_cycle_ms", "busy_ms"} <= set(out["assignments"][0])
    assert out["assignments"][0]["batch_size"] == 4
    for bad, field in [
        ({"policy": "static"}, "batching"),
        ({"policy": "static", "batch_size": 32}, "static_batch_size"),
        ({"policy": "greedy"}, "policy"),
        ({"policy": "none", "batch_size": 2}, "batching"),
    ]:
        doc["models"][0]["batching"] = bad
        with pytest.raises(InvalidProblem, match=field):
            problem_from_json(doc)


def test_a_run_time_too_small_to_count_gives_unbounded_throughput_not_an_overflow():
    # base 0 and a subnormal per-item time: the cycle holds more runs than a float counts
    m = ModelDemand(
        name="tiny",
        replicas=1,
        slo_ms=10.0,
        target_qps=10.0,
        latency=LatencyProfile(base_ms=0.0, per_item_ms=5e-324),
        memory=MemoryProfile(weights_mib=1.0, per_item_mib=0.0),
        max_batch=4,
        batching=BatchingPolicy.STATIC,
        static_batch_size=2,
    )
    cap = replica_capacity(m, 5.0)
    assert cap is not None and cap.max_qps == float("inf") and cap.batch_size == 2
