"""Worked examples for fixed node demands: multi-GPU replicas ("gangs"), node CPU and host
memory, and the ResourcesExceedEveryNode reason, through plan(), the online mode and the LNS."""

from __future__ import annotations

from collections import Counter
from typing import Any

from stowplan.placement import (
    ModelDemand,
    Problem,
    UnplacedReason,
    check_plan,
    defragment,
    place_arrivals,
    plan,
)
from stowplan.placement.instances import plan_to_json, problem_from_json, problem_to_json
from stowplan.placement.models import NodeResources
from stowplan.testing.placement_problems import make_gpus, make_model


def _pod(name: str, **extra: Any) -> ModelDemand:
    """A trace-style fixed demand: a GPU fraction (or whole GPUs), no batching, no GPU memory."""
    return make_model(name, weights_mib=0, per_item_mib=0, target_qps=0, **extra)


def _gpus_by_model(problem: Problem) -> dict[str, list[tuple[str, int]]]:
    out = plan(problem)
    assert check_plan(problem, out) == []
    return {a.model: list(a.gpu_keys) for a in out.assignments}


def test_four_gpu_gang_beside_fractions_on_one_eight_gpu_node() -> None:
    # n0: 8 GPUs. A 4-GPU gang takes GPUs 0-3 (whole, exclusive); six half-GPU pods pair up:
    # 500 + 500 milli = the whole cycle, so 3 more GPUs. 4 + 3 = 7 GPUs, one left empty.
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=4)
    halves = [_pod(f"half{i}", gpu_milli=500) for i in range(6)]
    problem = Problem(gpus=make_gpus(8, per_node=8), models=(gang, *halves))
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert out.gpus_used == 7 and not out.unplaced
    (g,) = [a for a in out.assignments if a.model == "gang"]
    assert (g.node, g.gpu, g.extra_gpus) == ("n0", 0, (1, 2, 3))
    per_gpu = Counter(a.gpu for a in out.assignments if a.model.startswith("half"))
    assert per_gpu == {4: 2, 5: 2, 6: 2}
    # the bound knows the gang's GPUs are exclusive: 4 + ceil(6 * 0.5) = 7
    assert out.lower_bound == 7
    doc = plan_to_json(out)
    assert [a["extra_gpus"] for a in doc["assignments"] if a["model"] == "gang"] == [[1, 2, 3]]
    assert all("extra_gpus" not in a for a in doc["assignments"] if a["model"] != "gang")


def test_tightest_node_for_each_gang() -> None:
    # nodes n0 (8 GPUs), n1 (4), n2 (8). The 8-GPU gang goes first (larger first) to n0 (tie
    # with n2 broken by order); then each 4-GPU gang to the node with the fewest empty GPUs
    # that still has 4: n1, then n2.
    gpus = (
        *make_gpus(8, per_node=8, prefix="a"),
        *make_gpus(4, per_node=4, prefix="b"),
        *make_gpus(8, per_node=8, prefix="c"),
    )
    models = (
        _pod("g4x", gpu_milli=1000, gpus_per_replica=4),
        _pod("g4y", gpu_milli=1000, gpus_per_replica=4),
        _pod("g8", gpu_milli=1000, gpus_per_replica=8),
    )
    where = _gpus_by_model(Problem(gpus=gpus, models=models))
    assert {k[0] for k in where["g8"]} == {"a0"}
    assert {k[0] for k in where["g4x"]} == {"b0"}
    assert {k[0] for k in where["g4y"]} == {"c0"}


def test_cpu_bound_node_strands_its_gpus() -> None:
    # n0 has 8 GPUs but only 8 cores: two whole-GPU pods of 4 cores exhaust its CPU and strand
    # its other 6 GPUs; n1 (2 GPUs, 64 cores) takes the next two; a fifth pod finds CPU on no
    # node with a free GPU: NoCapacity (it would fit an empty node), not ResourcesExceed.
    gpus = (*make_gpus(8, per_node=8, prefix="n"), *make_gpus(2, per_node=2, prefix="m"))
    nodes = (
        NodeResources(node="n0", cpu_milli=8000, memory_mib=65536),
        NodeResources(node="m0", cpu_milli=64000, memory_mib=65536),
    )
    pods = tuple(_pod(f"p{i}", gpu_milli=1000, cpu_milli=4000) for i in range(5))
    problem = Problem(gpus=gpus, models=pods, nodes=nodes)
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert Counter(a.node for a in out.assignments) == {"n0": 2, "m0": 2}
    assert [(u.model, u.reason) for u in out.unplaced] == [("p4", UnplacedReason.NO_CAPACITY)]


def test_host_memory_moves_a_slo_model_to_another_node() -> None:
    # SLO replicas that would share one GPU; node n0 has host memory for one of them only
    # (12 GiB each, 16 GiB on n0), n1 is not listed (unlimited): the second replica goes there.
    gpus = (*make_gpus(1, per_node=1, prefix="n"), *make_gpus(1, per_node=1, prefix="m"))
    a = make_model("a", host_memory_mib=12288)
    b = make_model("b", host_memory_mib=12288)
    problem = Problem(
        gpus=gpus, models=(a, b), nodes=(NodeResources(node="n0", cpu_milli=0, memory_mib=16384),)
    )
    where = _gpus_by_model(problem)
    assert sorted(k[0] for ks in where.values() for k in ks) == ["m0", "n0"]


def test_resources_exceed_every_node() -> None:
    gpus = (
        *make_gpus(8, per_node=8, prefix="n"),
        *make_gpus(4, per_node=4, gpu_type="T4", prefix="t"),
    )
    nodes = (NodeResources(node="n0", cpu_milli=32000, memory_mib=262144),)
    models = (
        _pod("too-wide", gpu_milli=1000, gpus_per_replica=16),  # 16 GPUs, nodes have 8 and 4
        _pod("too-wide-typed", gpu_milli=1000, gpus_per_replica=8, gpu_type="T4"),  # T4: 4 only
        _pod("cpu-hog", gpu_milli=200, cpu_milli=64000, gpu_type="A100"),  # n0 has 32 cores
        _pod("fits", gpu_milli=1000, gpus_per_replica=8),
    )
    out = plan(Problem(gpus=gpus, models=models, nodes=nodes))
    reasons = {u.model: u.reason for u in out.unplaced}
    assert reasons == {
        "too-wide": UnplacedReason.RESOURCES_EXCEED_EVERY_NODE,
        "too-wide-typed": UnplacedReason.RESOURCES_EXCEED_EVERY_NODE,
        "cpu-hog": UnplacedReason.RESOURCES_EXCEED_EVERY_NODE,
    }
    assert "16 GPUs per replica" in next(u.message for u in out.unplaced if u.model == "too-wide")
    assert [a.model for a in out.assignments] == ["fits"]


def test_gang_replicas_of_one_model_use_distinct_gpus_and_fleet_full_is_no_capacity() -> None:
    # 4 replicas of a 2-GPU model on two 4-GPU nodes take all 8 GPUs (distinct, 2 per replica,
    # each pair on one node); a 5th replica is NoCapacity: it would fit an empty node.
    model = _pod("g", gpu_milli=1000, gpus_per_replica=2, replicas=4)
    problem = Problem(gpus=make_gpus(8, per_node=4), models=(model,))
    out = plan(problem)
    assert check_plan(problem, out) == []
    assert out.gpus_used == 8 and not out.unplaced
    model5 = model.model_copy(update={"replicas": 5})
    out5 = plan(Problem(gpus=make_gpus(8, per_node=4), models=(model5,)))
    assert [(u.replica, u.reason) for u in out5.unplaced] == [(4, UnplacedReason.NO_CAPACITY)]


def test_online_keeps_gangs_and_defragment_never_moves_them() -> None:
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2, cpu_milli=2000)
    small = make_model("slo", replicas=3, cpu_milli=1000)
    nodes = (NodeResources(node="n0", cpu_milli=4000, memory_mib=1 << 20),)
    problem = Problem(gpus=make_gpus(8, per_node=4), models=(gang, small), nodes=nodes)
    first = plan(problem)
    assert check_plan(problem, first) == []
    grown = problem.model_copy(
        update={
            "current": first.assignments,
            "models": (gang.model_copy(update={"replicas": 2}), small),
        }
    )
    online = place_arrivals(grown)
    assert check_plan(grown, online) == [] and online.moves == 0
    assert len([a for a in online.assignments if a.model == "gang"]) == 2
    again = plan(grown.model_copy(update={"current": online.assignments}))
    assert again.moves == 0
    compact = defragment(grown, 3)
    assert check_plan(grown, compact) == []
    before = {a.replica_key: a.placement_key for a in online.assignments if a.model == "gang"}
    after = {a.replica_key: a.placement_key for a in compact.assignments if a.model == "gang"}
    assert before == after


def test_time_budget_keeps_node_limits_and_gangs() -> None:
    # many small SLO replicas with CPU requests on CPU-limited nodes plus gangs; the LNS runs
    # CP-SAT neighbourhoods (node constraints inside) and ruin-and-recreate steps
    gpus = make_gpus(16, per_node=4, memory_mib=81920)
    nodes = tuple(NodeResources(node=f"n{k}", cpu_milli=6000, memory_mib=1 << 20) for k in range(4))
    models = [_pod("gang", gpu_milli=1000, gpus_per_replica=2, replicas=2, cpu_milli=1000)]
    models += [
        make_model(f"m{i}", replicas=2, target_qps=50 * (i + 1), cpu_milli=500 * (1 + i % 3))
        for i in range(8)
    ]
    problem = Problem(gpus=gpus, models=tuple(models), nodes=nodes)
    fast = plan(problem)
    slow = plan(problem, time_limit_s=1.5)
    assert check_plan(problem, fast) == [] and check_plan(problem, slow) == []
    assert (len(slow.unplaced), slow.gpus_used) <= (len(fast.unplaced), fast.gpus_used)


def test_instance_json_round_trip_with_node_fields() -> None:
    doc = {
        "gpus": [{"node": "n0", "index": i, "memory_mib": 16000, "type": "T4"} for i in range(4)],
        "nodes": [{"node": "n0", "cpu_milli": 16000, "memory_mib": 65536}],
        "models": [
            {
                "name": "pod",
                "replicas": 1,
                "slo_ms": 1000,
                "target_qps": 0,
                "latency_ms": {"base": 0, "per_item": 0},
                "memory_mib": {"weights": 0, "per_item": 0},
                "max_batch": 1,
                "gpu_milli": 1000,
                "gpus": 4,
                "cpu_milli": 8000,
                "host_memory_mib": 32768,
            }
        ],
    }
    problem = problem_from_json(doc)
    assert problem.models[0].gpus_per_replica == 4
    assert problem.nodes == (NodeResources(node="n0", cpu_milli=16000, memory_mib=65536),)
    assert problem_from_json(problem_to_json(problem)) == problem
    out = plan(problem)
    assert check_plan(problem, out) == [] and out.gpus_used == 4


def test_cpsat_neighbourhood_respects_node_cpu() -> None:
    # a1 and a2 (1 core each) would share one GPU. n0 has 1 core and one GPU, n1 one GPU and no
    # limit. Without the node constraint the cheapest repack keeps a1 (it is in ``current``)
    # and moves a2 next to it on n0, which overcommits n0's CPU; with it, a1 moves to n1.
    from stowplan.placement.cpsat import repack
    from stowplan.placement.packindex import PackIndex
    from stowplan.placement.packing import PackState

    gpus = (*make_gpus(1, per_node=1, prefix="n"), *make_gpus(1, per_node=1, prefix="m"))
    a1 = make_model("a1", target_qps=10, cpu_milli=1000)
    a2 = make_model("a2", target_qps=10, cpu_milli=1000)
    nodes = (NodeResources(node="n0", cpu_milli=1000, memory_mib=1 << 20),)
    index = PackIndex.build(Problem(gpus=gpus, models=(a1, a2), nodes=nodes))
    state = PackState(index)
    state.add((0, 0), 0)
    state.add((1, 0), 1)
    out = repack(state, [0, 1], [(0, 0), (1, 0)], {(0, 0): 0}, 5.0, 1)
    assert out == {(0, 0): 1, (1, 0): 1}
