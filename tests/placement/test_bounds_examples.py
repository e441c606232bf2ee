"""Lower bounds: worked examples (volume, Martello-Toth L2, matching) and the public surface."""

from __future__ import annotations

import stowplan.placement as placement
from stowplan.placement.bounds import martello_toth_l2, matching_bound, volume_bound
from stowplan.placement.planner import tight_lower_bound
from stowplan.testing.placement_problems import make_gpus, make_model


def test_volume_and_l2() -> None:
    # three items of 0.6: volume ceil(1.8) = 2, but no two fit together -> L2 = 3
    assert volume_bound([0.6, 0.6, 0.6]) == 2
    assert martello_toth_l2([0.6, 0.6, 0.6]) == 3
    # 0.5 + 0.5 fit in one bin
    assert martello_toth_l2([0.5, 0.5]) == 1


def test_matching_bound() -> None:
    # 5 items that are never three to a GPU, at most 2 compatible pairs -> 5 - 2 = 3 GPUs
    assert matching_bound([2, 3], 2.0) == 3


def test_tight_bound_sees_incompatible_pairs() -> None:
    # two models, 2 replicas each, share 0.4 alone but the SLOs force different duty cycles:
    # a (SLO 12 ms) can only run at d <= ~8, b is heavy at small d -> they never share
    a = make_model("a", replicas=2, slo_ms=12, target_qps=300, base_ms=2.0, per_item_ms=0.4)
    b = make_model("b", replicas=2, slo_ms=400, target_qps=40, base_ms=3.0, per_item_ms=1.0)
    problem = placement.Problem(gpus=make_gpus(8), models=(a, b))
    out = placement.plan(problem)
    assert placement.check_plan(problem, out) == []
    assert tight_lower_bound(problem) <= out.gpus_used


def test_public_api_all_sorted_and_complete() -> None:
    names = placement.__all__
    assert list(names) == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        assert hasattr(placement, name)
    for name in ("plan", "check_plan", "replica_capacity", "Violation", "PlacementError"):
        assert name in names


def test_node_cpu_limits_raise_the_bound() -> None:
    # four nodes of 8 GPUs and 8 cores; eight 250-milli pods of 4 cores each. By GPU volume
    # two GPUs would do (8 x 250 = 2,000 milli), but the pods need
    # 8 x 4 = 32 cores = all four nodes, and every node hosting a pod uses a GPU: bound 4.
    # Best-fit meets it: two pods per node share one GPU (500 milli, 8 cores).
    nodes = tuple(
        placement.NodeResources(node=f"n{i}", cpu_milli=8000, memory_mib=10**6) for i in range(4)
    )
    pods = tuple(
        make_model(
            f"p{i}", weights_mib=0, per_item_mib=0, target_qps=0, gpu_milli=250, cpu_milli=4000
        )
        for i in range(8)
    )
    problem = placement.Problem(gpus=make_gpus(32, per_node=8), models=pods, nodes=nodes)
    out = placement.plan(problem)
    assert placement.check_plan(problem, out) == []
    assert out.lower_bound == 4 == out.gpus_used
