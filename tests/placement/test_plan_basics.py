"""plan(): unplaced reasons, distinct GPUs per model, filters, stability, priorities."""

from __future__ import annotations

import pytest

from stowplan.placement import (
    Gpu,
    InvalidProblem,
    PlacementError,
    Problem,
    UnplacedReason,
    check_plan,
    plan,
)
from stowplan.testing.placement_problems import make_gpus, make_model


def test_small_models_share_one_gpu() -> None:
    # two 100 qps replicas at d = 40: t = 4 + 0.5 * 4 = 6 ms each -> 12 of 40 ms; mem 580 each
    p = Problem(gpus=make_gpus(4), models=(make_model("a"), make_model("b")))
    out = plan(p)
    assert check_plan(p, out) == []
    assert out.gpus_used == 1 == out.lower_bound
    assert len({a.duty_cycle_ms for a in out.assignments}) == 1


def test_replicas_of_one_model_on_distinct_gpus() -> None:
    p = Problem(gpus=make_gpus(4), models=(make_model("a", replicas=3),))
    out = plan(p)
    assert check_plan(p, out) == []
    assert len({a.gpu_key for a in out.assignments}) == 3
    assert out.lower_bound == 3


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        pytest.param(make_model("m", slo_ms=4.0), UnplacedReason.SLO_BELOW_BASE_LATENCY, id="slo"),
        pytest.param(
            make_model("m", weights_mib=20_000),
            UnplacedReason.MEMORY_EXCEEDS_EVERY_GPU,
            id="memory",
        ),
        pytest.param(make_model("m", gpu_type="T4"), UnplacedReason.NO_MATCHING_NODE, id="type"),
        pytest.param(
            make_model("m", node_selector={"zone": "b"}),
            UnplacedReason.NO_MATCHING_NODE,
            id="selector",
        ),
        pytest.param(make_model("m", replicas=5), UnplacedReason.NO_CAPACITY, id="capacity"),
    ],
)
def test_unplaced_reasons(model: object, reason: UnplacedReason) -> None:
    p = Problem(gpus=make_gpus(4), models=(model,))  # type: ignore[arg-type]
    out = plan(p)
    assert check_plan(p, out) == []
    assert out.unplaced and {u.reason for u in out.unplaced} == {reason}
    assert all(u.message for u in out.unplaced)


def test_priority_wins_when_short() -> None:
    # each replica alone needs > half a GPU (1,000 qps at d = 20: b = 20, t = 4 + 10 = 14 of 20)
    low = make_model("low", replicas=2, target_qps=2000, priority=0)
    high = make_model("high", replicas=2, target_qps=2000, priority=10)
    p = Problem(gpus=make_gpus(2), models=(low, high))
    out = plan(p)
    assert check_plan(p, out) == []
    assert {a.model for a in out.assignments} == {"high"}
    assert {u.model for u in out.unplaced} == {"low"}


def test_priority_preempts_current_low_priority() -> None:
    low = make_model("low", replicas=2, target_qps=2000, priority=0)
    first = plan(Problem(gpus=make_gpus(2), models=(low,)))
    high = make_model("high", replicas=2, target_qps=2000, priority=10)
    p = Problem(gpus=make_gpus(2), models=(low, high), current=first.assignments)
    out = plan(p)
    assert check_plan(p, out) == []
    assert {a.model for a in out.assignments} == {"high"}


def test_replan_keeps_current_placement() -> None:
    gpus = make_gpus(8)
    models = tuple(make_model(f"m{i}", replicas=2, target_qps=300) for i in range(6))
    first = plan(Problem(gpus=gpus, models=models))
    # scale one model up: the others stay where they are
    models2 = (*models[:5], make_model("m5", replicas=3, target_qps=300))
    p = Problem(gpus=gpus, models=models2, current=first.assignments)
    out = plan(p)
    assert check_plan(p, out) == []
    before = {a.replica_key: a.gpu_key for a in first.assignments if a.model != "m5"}
    after = {a.replica_key: a.gpu_key for a in out.assignments}
    assert all(after[k] == v for k, v in before.items())
    assert out.moves == 0


def test_pinned_replica_stays() -> None:
    gpus = make_gpus(4)
    models = (make_model("a"),)
    current = plan(Problem(gpus=gpus, models=models)).assignments
    moved = current[0].model_copy(update={"node": "n0", "gpu": 3})
    p = Problem(gpus=gpus, models=models, current=(moved,), pinned=frozenset({("a", 0)}))
    out = plan(p, time_limit_s=0.5)
    assert check_plan(p, out) == []
    assert out.assignments[0].gpu_key == ("n0", 3)


def test_invalid_problem_is_a_placement_error() -> None:
    dup = (Gpu(node="n", index=0, memory_mib=1), Gpu(node="n", index=0, memory_mib=1))
    with pytest.raises(InvalidProblem, match="listed twice"):
        plan(Problem(gpus=dup, models=()))
    assert issubclass(InvalidProblem, PlacementError)
    with pytest.raises(InvalidProblem):
        plan(Problem(gpus=make_gpus(1), models=(make_model("m", slo_ms=float("inf")),)))


def test_check_plan_catches_overfull_gpu() -> None:
    p = Problem(gpus=make_gpus(2), models=(make_model("a"), make_model("b")))
    good = plan(p)
    bad_assign = tuple(a.model_copy(update={"busy_ms": 30.0}) for a in good.assignments)
    bad = good.model_copy(update={"assignments": bad_assign})
    codes = {v.code for v in check_plan(p, bad)}
    assert "CycleOverfull" in codes
