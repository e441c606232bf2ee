"""Preemption with multi-GPU replicas ("gangs"): a higher-priority gang evicts lower-priority
replicas from the GPUs of one node, a higher-priority one-GPU replica may evict a lower-priority
gang, and nothing of equal or higher priority, and nothing pinned, is ever evicted."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stowplan.placement import (
    Assignment,
    Gpu,
    ModelDemand,
    Problem,
    UnplacedReason,
    check_plan,
    plan,
)
from stowplan.placement.models import NodeResources
from stowplan.testing.placement_problems import make_gpus, make_model


def _pod(name: str, **extra: Any) -> ModelDemand:
    """A trace-style fixed demand: a GPU fraction (or whole GPUs), no batching, no GPU memory."""
    return make_model(name, weights_mib=0, per_item_mib=0, target_qps=0, **extra)


def _where(out: Any) -> dict[tuple[str, int], set[tuple[str, int]]]:
    return {a.replica_key: set(a.gpu_keys) for a in out.assignments}


def _four_pods_one_per_gpu() -> tuple[
    tuple[Gpu, ...], tuple[ModelDemand, ...], tuple[Assignment, ...]
]:
    """Two 2-GPU nodes and four one-replica 400-milli pods, placed one per GPU (best-fit would
    pair them): (GPUs, pods, that running placement)."""
    gpus = (*make_gpus(2, per_node=2, prefix="a"), *make_gpus(2, per_node=2, prefix="b"))
    lows = tuple(_pod(f"low{i}", gpu_milli=400) for i in range(4))
    spread = tuple(
        a.model_copy(update={"node": gpus[i].node, "gpu": gpus[i].index})
        for i, a in enumerate(
            sorted(plan(Problem(gpus=gpus, models=lows)).assignments, key=lambda a: a.model)
        )
    )
    return gpus, lows, spread


def test_gang_evicts_the_cheapest_lower_priority_gpus() -> None:
    # Two 4-GPU nodes, full: eight 600-milli pods, one per GPU (600 + 600 > 1000), six of
    # priority 0 and two of priority 5. A 2-GPU gang of priority 10 arrives: it takes two GPUs
    # of one node whose pods have priority 0 (each node has at least two). The two evicted pods
    # find no home (every other GPU holds a 600-milli pod), so they are unplaced; the
    # priority-5 pods keep their GPUs.
    gpus = (*make_gpus(4, per_node=4, prefix="a"), *make_gpus(4, per_node=4, prefix="b"))
    low = _pod("low", gpu_milli=600, replicas=6)
    mid = _pod("mid", gpu_milli=600, replicas=2, priority=5)
    first = plan(Problem(gpus=gpus, models=(mid, low)))
    assert not first.unplaced
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2, priority=10)
    problem = Problem(gpus=gpus, models=(mid, low, gang), current=first.assignments)
    out = plan(problem)
    assert check_plan(problem, out) == []
    where = _where(out)
    assert ("gang", 0) in where and len(where[("gang", 0)]) == 2
    # every mid replica kept its GPU; exactly two low replicas were evicted and not re-placed
    before = _where(first)
    assert all(where[("mid", r)] == before[("mid", r)] for r in range(2))
    assert {(u.model, u.reason) for u in out.unplaced} == {("low", UnplacedReason.NO_CAPACITY)}
    assert len(out.unplaced) == 2
    gang_gpus = where[("gang", 0)]
    assert len({node for node, _ in gang_gpus}) == 1
    assert out.moves == 0  # evicted replicas are unplaced, not moved


def test_gang_evictions_find_new_homes_when_there_is_room() -> None:
    # n0 (2 GPUs) holds two 400-milli pods of priority 0, one per GPU; n1 (2 GPUs) holds two more.
    # A priority-10 2-GPU gang fits only on a node emptied: it takes one node, and the two
    # evicted 400-milli pods join the other node's GPUs (400 + 400 <= 1000). Nothing unplaced.
    # (four one-replica models: replicas of one model would need distinct GPUs)
    gpus, lows, spread = _four_pods_one_per_gpu()
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2, priority=10)
    problem = Problem(gpus=gpus, models=(*lows, gang), current=spread)
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert not out.unplaced
    assert len(_where(out)[("gang", 0)]) == 2


def test_one_gpu_replica_evicts_a_lower_priority_gang() -> None:
    # One 2-GPU node fully held by a priority-0 gang; a priority-10 whole-GPU pod arrives.
    # Evicting the gang frees both GPUs; the gang cannot come back (one GPU left), so it is
    # unplaced with NoCapacity and the pod runs.
    gpus = make_gpus(2, per_node=2)
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2)
    first = plan(Problem(gpus=gpus, models=(gang,)))
    pod = _pod("pod", gpu_milli=1000, priority=10)
    problem = Problem(gpus=gpus, models=(gang, pod), current=first.assignments)
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert {a.model for a in out.assignments} == {"pod"}
    assert [(u.model, u.reason) for u in out.unplaced] == [("gang", UnplacedReason.NO_CAPACITY)]


def test_pinned_and_equal_priority_replicas_are_never_evicted() -> None:
    gpus = make_gpus(2, per_node=2)
    low = _pod("low", gpu_milli=1000, replicas=2)
    first = plan(Problem(gpus=gpus, models=(low,)))
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2, priority=10)
    pinned = Problem(gpus=gpus, models=(low, gang), current=first.assignments, pinned=(("low", 1),))
    out = plan(pinned)
    assert check_plan(pinned, out) == []
    assert [u.model for u in out.unplaced] == ["gang"]  # one GPU is pinned: no room for 2
    same = _pod("gang", gpu_milli=1000, gpus_per_replica=2, priority=0)
    equal = Problem(gpus=gpus, models=(low, same), current=first.assignments)
    out = plan(equal)
    assert [u.model for u in out.unplaced] == ["gang"]
    assert out.moves == 0


def test_gang_preemption_respects_node_cpu() -> None:
    # n0: 2 GPUs, 8 cores, both GPUs held by priority-0 whole-GPU pods of 1 core each; a
    # priority-10 gang needs 2 GPUs and 8 cores. After evicting both pods n0 has 8 cores: fits.
    # With 7 cores on the node it never fits, and the state is left exactly as it was.
    for cores, fits in ((8, True), (7, False)):
        gpus = make_gpus(2, per_node=2)
        nodes = (NodeResources(node="n0", cpu_milli=cores * 1000, memory_mib=10**6),)
        low = _pod("low", gpu_milli=1000, replicas=2, cpu_milli=1000)
        first = plan(Problem(gpus=gpus, models=(low,), nodes=nodes))
        gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2, cpu_milli=8000, priority=10)
        problem = Problem(gpus=gpus, models=(low, gang), nodes=nodes, current=first.assignments)
        out = plan(problem)
        assert check_plan(problem, out) == []
        if fits:
            assert {a.model for a in out.assignments} == {"gang"}
        else:
            assert _where(out) == _where(first)
            assert [u.reason for u in out.unplaced] == [UnplacedReason.RESOURCES_EXCEED_EVERY_NODE]


@st.composite
def _fleets(draw: st.DrawFn) -> Problem:
    per_node = draw(st.sampled_from([2, 4]))
    gpus = make_gpus(per_node * draw(st.integers(1, 3)), per_node=per_node)
    models = []
    for i in range(draw(st.integers(1, 5))):
        k = draw(st.sampled_from([1, 1, 2, per_node]))
        milli = 1000 if k > 1 else draw(st.sampled_from([300, 600, 1000]))
        models.append(
            _pod(
                f"m{i}",
                gpu_milli=milli,
                gpus_per_replica=k,
                replicas=draw(st.integers(1, 3)),
                priority=draw(st.integers(0, 2)),
            )
        )
    return Problem(gpus=gpus, models=tuple(models))


@settings(max_examples=60, deadline=None)
@given(_fleets(), st.data())
def test_replans_with_preemption_stay_valid_and_never_evict_upwards(
    problem: Problem, data: st.DataObject
) -> None:
    # plan part of the fleet, then add a higher-priority model: the re-plan is valid and no
    # replica of priority >= the newcomer's lost its GPU
    first = plan(problem)
    newcomer = _pod(
        "new",
        gpu_milli=1000,
        gpus_per_replica=data.draw(st.sampled_from([1, 2])),
        replicas=data.draw(st.integers(1, 2)),
        priority=data.draw(st.integers(1, 3)),
    )
    p2 = problem.model_copy(
        update={"models": (*problem.models, newcomer), "current": first.assignments}
    )
    out = plan(p2)
    assert check_plan(p2, out) == []
    kept = {a.replica_key for a in out.assignments}
    prio = {m.name: m.priority for m in p2.models}
    for a in first.assignments:
        if prio[a.model] >= newcomer.priority:
            assert a.replica_key in kept


def test_search_makes_room_for_a_waiting_gang_by_moving_one_gpu_replicas() -> None:
    # Two 2-GPU nodes, one 400-milli pod on each GPU (running placement), and a 2-GPU gang of
    # the same priority (no preemption). Best-fit keeps everything where it is: the gang waits.
    # With a time budget the search empties one node (its two pods join the other node's GPUs:
    # 400 + 400 <= 1,000) and the gang takes it: nothing unplaced, two moves.
    gpus, lows, spread = _four_pods_one_per_gpu()
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2)
    problem = Problem(gpus=gpus, models=(*lows, gang), current=spread)
    quick = plan(problem)
    assert [u.model for u in quick.unplaced] == ["gang"]
    searched = plan(problem, time_limit_s=1.0)
    assert check_plan(problem, searched) == []
    assert not searched.unplaced
    assert searched.moves == 2


def test_no_capacity_message_names_what_ran_out() -> None:
    # one node, 2 GPUs, 2 cores: two 1-core pods take the CPU and a third waits for the CPU
    # (the GPUs still have room)
    gpus = make_gpus(2, per_node=2)
    nodes = (NodeResources(node="n0", cpu_milli=2000, memory_mib=10**6),)
    pods = tuple(_pod(f"p{i}", gpu_milli=100, cpu_milli=1000) for i in range(3))
    problem = Problem(gpus=gpus, models=pods, nodes=nodes)
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert len(out.unplaced) == 1 and "CPU and host memory" in out.unplaced[0].message
    # a higher-priority whole-GPU pod goes first; the 2-GPU gang then waits for 2 empty GPUs
    first = _pod("first", gpu_milli=1000, priority=1)
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2)
    problem = Problem(gpus=gpus, models=(first, gang))
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert [u.model for u in out.unplaced] == ["gang"]
    assert "2 empty GPUs on one node" in out.unplaced[0].message
