"""Property tests: every plan the engine returns passes check_plan (the independent oracle),
for SLO models, GPU fractions and mixes with node CPU/host memory and multi-GPU replicas."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowplan.placement import (
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    Problem,
    UnplacedReason,
    check_plan,
    defragment,
    place_arrivals,
    plan,
)
from stowplan.placement.models import NodeResources
from stowplan.testing.placement_problems import small_problems

_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(small_problems())
def test_best_fit_plans_are_valid(problem: Problem) -> None:
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert out.gpus_used >= min(out.lower_bound, out.gpus_used)
    placed = {a.replica_key for a in out.assignments}
    unplaced = {(u.model, u.replica) for u in out.unplaced}
    assert placed.isdisjoint(unplaced)
    assert len(placed) + len(unplaced) == sum(m.replicas for m in problem.models)


@_settings
@given(small_problems())
def test_lower_bound_holds_when_everything_is_placed(problem: Problem) -> None:
    out = plan(problem)
    if not out.unplaced:
        assert out.lower_bound <= out.gpus_used


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_time_budget_never_worse_than_best_fit(problem: Problem) -> None:
    fast = plan(problem)
    slow = plan(problem, time_limit_s=0.3)
    assert check_plan(problem, slow) == []
    assert len(slow.unplaced) <= len(fast.unplaced)
    if len(slow.unplaced) == len(fast.unplaced):
        assert slow.gpus_used <= fast.gpus_used


@_settings
@given(small_problems())
def test_replan_of_a_valid_plan_moves_nothing(problem: Problem) -> None:
    first = plan(problem)
    again = problem.model_copy(update={"current": first.assignments})
    second = plan(again)
    assert check_plan(again, second) == []
    assert second.moves == 0


@_settings
@given(small_problems(), st.integers(0, 3))
def test_online_never_moves_and_defrag_is_bounded(problem: Problem, max_moves: int) -> None:
    half = problem.model_copy(
        update={
            "models": tuple(
                m.model_copy(update={"replicas": m.replicas // 2}) for m in problem.models
            )
        }
    )
    current = plan(half).assignments
    grown = problem.model_copy(update={"current": current})
    online = place_arrivals(grown)
    assert check_plan(grown, online) == []
    assert online.moves == 0
    compact = defragment(grown, max_moves)
    assert check_plan(grown, compact) == []
    assert compact.moves <= max_moves
    assert len(compact.unplaced) <= len(online.unplaced)


@st.composite
def mixes(draw: st.DrawFn) -> Problem:
    """SLO models and trace-style fixed demands (fractions, whole GPUs, multi-GPU gangs) with
    CPU/host-memory requests, on nodes of 1-8 GPUs, some with CPU/memory limits."""
    gpus: list[Gpu] = []
    nodes: list[NodeResources] = []
    for k in range(draw(st.integers(1, 4))):
        gpu_type = draw(st.sampled_from(["A100", "T4"]))
        memory = draw(st.sampled_from([16000, 81920]))
        for i in range(draw(st.sampled_from([1, 2, 4, 8]))):
            gpus.append(Gpu(node=f"n{k}", index=i, memory_mib=memory, gpu_type=gpu_type))
        if draw(st.booleans()):
            nodes.append(
                NodeResources(
                    node=f"n{k}",
                    cpu_milli=draw(st.sampled_from([0, 4000, 16000, 64000])),
                    memory_mib=draw(st.sampled_from([8192, 65536, 262144])),
                )
            )
    models = []
    for j in range(draw(st.integers(0, 8))):
        cpu = draw(st.sampled_from([0, 0, 1000, 4000, 12000]))
        host = draw(st.sampled_from([0, 0, 4096, 32768]))
        gpu_type = draw(st.sampled_from(["", "", "A100", "T4"]))
        if draw(st.booleans()):  # a trace pod: fraction, whole GPU or gang
            milli = draw(st.sampled_from([100, 250, 500, 1000, 1000]))
            gang = draw(st.sampled_from([1, 2, 4, 8])) if milli == 1000 else 1
            models.append(
                ModelDemand(
                    name=f"p{j}",
                    replicas=draw(st.integers(0, 3)),
                    slo_ms=1000,
                    target_qps=0,
                    latency=LatencyProfile(base_ms=0, per_item_ms=0),
                    memory=MemoryProfile(
                        weights_mib=draw(st.sampled_from([0, 2000])), per_item_mib=0
                    ),
                    max_batch=1,
                    priority=draw(st.integers(0, 1)),
                    gpu_type=gpu_type,
                    gpu_milli=milli,
                    gpus_per_replica=gang,
                    cpu_milli=cpu,
                    host_memory_mib=host,
                )
            )
        else:
            models.append(
                ModelDemand(
                    name=f"m{j}",
                    replicas=draw(st.integers(0, 3)),
                    slo_ms=draw(st.floats(5, 200)),
                    target_qps=draw(st.sampled_from([0.0, 50.0, 400.0])),
                    latency=LatencyProfile(
                        base_ms=draw(st.floats(0.5, 10)), per_item_ms=draw(st.floats(0, 1))
                    ),
                    memory=MemoryProfile(
                        weights_mib=draw(st.floats(0, 8000)), per_item_mib=draw(st.floats(0, 20))
                    ),
                    max_batch=draw(st.integers(1, 128)),
                    priority=draw(st.integers(0, 1)),
                    gpu_type=gpu_type,
                    cpu_milli=cpu,
                    host_memory_mib=host,
                )
            )
    return Problem(gpus=tuple(gpus), models=tuple(models), nodes=tuple(nodes))


@_settings
@given(mixes())
def test_mixed_fixed_demand_plans_are_valid(problem: Problem) -> None:
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert len(out.assignments) + len(out.unplaced) == sum(m.replicas for m in problem.models)
    if not out.unplaced:
        assert out.lower_bound <= out.gpus_used
    again = problem.model_copy(update={"current": out.assignments})
    replanned = plan(again)
    assert check_plan(again, replanned) == [] and replanned.moves == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes())
def test_mixed_fixed_demand_with_time_budget(problem: Problem) -> None:
    fast = plan(problem)
    slow = plan(problem, time_limit_s=0.3)
    assert check_plan(problem, slow) == []
    assert (len(slow.unplaced), slow.gpus_used) <= (len(fast.unplaced), fast.gpus_used)
    # a model no node can host gets the same reason either way
    exceed = {
        u.model for u in fast.unplaced if u.reason == UnplacedReason.RESOURCES_EXCEED_EVERY_NODE
    }
    assert exceed == {
        u.model for u in slow.unplaced if u.reason == UnplacedReason.RESOURCES_EXCEED_EVERY_NODE
    }


@_settings
@given(mixes(), st.integers(0, 3))
def test_mixed_online_and_defrag_are_valid(problem: Problem, max_moves: int) -> None:
    half = problem.model_copy(
        update={
            "models": tuple(
                m.model_copy(update={"replicas": m.replicas // 2}) for m in problem.models
            )
        }
    )
    grown = problem.model_copy(update={"current": plan(half).assignments})
    online = place_arrivals(grown)
    assert check_plan(grown, online) == [] and online.moves == 0
    compact = defragment(grown, max_moves)
    assert check_plan(grown, compact) == []
    assert compact.moves <= max_moves
