"""No replica that fits a GPU of its own is refused: models that fit only in a narrow band of
duty cycles between the search's levels (90-100 % of a GPU) are found exactly and placed."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stowplan import placement
from stowplan.placement.capacity import alone_capacity, level_costs, replica_capacity
from stowplan.placement.models import (
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    Problem,
    UnplacedReason,
)
from stowplan.placement.verify import check_plan


def model(name="narrow", replicas=1, qps=1420.1, base=9.65, per=0.0934, slo=494.0, max_batch=16):
    return ModelDemand(
        name=name,
        replicas=replicas,
        slo_ms=slo,
        target_qps=qps * replicas,
        latency=LatencyProfile(base_ms=base, per_item_ms=per),
        memory=MemoryProfile(weights_mib=500, per_item_mib=4),
        max_batch=max_batch,
    )


def gpus(n):
    return tuple(Gpu(node=f"node-{i // 4}", index=i % 4, memory_mib=16_000) for i in range(n))


def test_the_issue_14_model_fits_alone_between_two_levels():
    m = model()
    assert not level_costs(m).feasible  # 10 ms: batch 15 takes 11.05 ms; 12 ms: batch 18 > 16
    cap = alone_capacity(m)
    assert cap is not None
    # batch 16 at d = 16 * 1000 / 1420.1 = 11.267 ms takes 9.65 + 16 * 0.0934 = 11.144 ms
    assert cap.batch_size == 16
    assert 11.1 <= cap.duty_cycle_ms <= 11.27
    assert abs(cap.busy_ms - 11.1444) < 1e-9
    assert replica_capacity(m, cap.duty_cycle_ms) == cap


def test_plan_places_every_such_replica_while_gpus_last_and_says_why_after():
    small = ModelDemand(
        name="small",
        replicas=2,
        slo_ms=100,
        target_qps=100,
        latency=LatencyProfile(base_ms=2, per_item_ms=0.5),
        memory=MemoryProfile(weights_mib=100, per_item_mib=1),
        max_batch=16,
    )
    problem = Problem(gpus=gpus(5), models=(model(replicas=3), small))
    plan = placement.plan(problem)
    assert check_plan(problem, plan) == []
    assert plan.unplaced == ()
    narrow = [a for a in plan.assignments if a.model == "narrow"]
    assert len({a.gpu_key for a in narrow}) == 3
    shared = {a.gpu_key for a in plan.assignments if a.model == "small"}
    assert not shared & {a.gpu_key for a in narrow}  # alone means alone
    # a re-plan keeps everything where it is
    again = placement.plan(problem.model_copy(update={"current": plan.assignments}), time_limit_s=1)
    assert again.moves == 0 and check_plan(problem, again) == []
    # one GPU short for the narrow model alone: the message says it fits alone, and that no
    # empty GPU is left (not "add replicas")
    only = Problem(gpus=gpus(2), models=(model(replicas=3),))
    short = placement.plan(only)
    assert check_plan(only, short) == []
    (u,) = short.unplaced
    assert u.model == "narrow" and u.reason == UnplacedReason.NO_CAPACITY
    assert "fits only alone" in u.message and "no empty GPU" in u.message


def _fits_somewhere_on_a_grid(m: ModelDemand) -> bool:
    d = np.linspace(0.01, m.slo_ms, 200_000)
    qps = m.target_qps / m.replicas
    b = np.maximum(1, np.ceil(qps * d / 1000 - 1e-9))
    t = m.latency.base_ms + m.latency.per_item_ms * b
    return bool(((b <= m.max_batch) & (t <= d) & (d + t <= m.slo_ms)).any())


@settings(max_examples=150, deadline=None)
@given(
    base=st.floats(1.0, 30.0),
    per=st.floats(0.01, 2.0),
    b_star=st.integers(1, 32),
    slack=st.floats(0.0, 0.12),
    slo_factor=st.floats(2.05, 60.0),
)
def test_whatever_fits_alone_is_found_and_placed(base, per, b_star, slack, slo_factor):
    # qps chosen so that a batch of b_star needs 88-100 % of the cycle that collects it
    t = base + per * b_star
    qps = b_star * 1000.0 / (t * (1 + slack))
    m = model(qps=qps, base=base, per=per, slo=t * slo_factor, max_batch=max(b_star, 1))
    cap = alone_capacity(m)
    if _fits_somewhere_on_a_grid(m):
        assert cap is not None
    if cap is None:
        return
    assert replica_capacity(m, cap.duty_cycle_ms) == cap
    problem = Problem(
        gpus=gpus(2), models=(m.model_copy(update={"replicas": 2, "target_qps": 2 * qps}),)
    )
    plan = placement.plan(problem)
    assert check_plan(problem, plan) == []
    assert plan.unplaced == ()
