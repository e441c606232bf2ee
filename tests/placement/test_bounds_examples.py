"""Lower bounds: worked examples (volume, Martello-Toth L2, matching) and the public surface."""

from __future__ import annotations

import stowplan.placement as placement
from stowplan.placement.bounds import martello_toth_l2, matching_bound, volume_bound
from stowplan.placement.instances import make_gpus, make_model
from stowplan.placement.planner import tight_lower_bound


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
