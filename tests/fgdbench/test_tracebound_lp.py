"""The trace upper bounds on tiny hand-checked clusters: GPU configurations of fractional
pods, multi-GPU pods per node, CPU, and the pods that provably fit at their arrival (protocol
bound)."""

from __future__ import annotations

import pytest

from stowplan.fgdbench.tracebound import (
    forced_by_lp,
    forced_kinds,
    pod_kind,
    trace_bounds,
    upper_bound,
)
from stowplan.fgdbench.tracecluster import NodeRow, PodRow

TWO_T4 = [NodeRow("a", 64000, 262144, 1, "T4"), NodeRow("b", 64000, 262144, 1, "T4")]


def pod(name: str, milli: int, num: int = 1, cpu: int = 1000, spec: str = "") -> PodRow:
    return PodRow(name, cpu, 1024, num, milli, spec)


def test_large_fractional_pods_take_a_gpu_each_and_only_small_pods_fill_the_hole() -> None:
    pods = [pod("a", 810), pod("b", 810), pod("c", 810), pod("d", 150)]
    res = upper_bound(TWO_T4, pods)
    # 2,580 milli arrived on 2,000 of capacity, but no two 810s share a GPU: 2 x 810 = 1,620,
    # plus the 150 pod in one 190 hole = 1,770 (a volume bound would say 2,000)
    assert res.allocated_milli == pytest.approx(1770)
    assert res.ratio_pct == pytest.approx(88.5)


def test_fractional_pods_pack_by_whole_gpu_configurations() -> None:
    # five 400-milli pods on two GPUs: 2,000 milli arrived = capacity, but at most two fit on a
    # GPU (3 x 400 > 1,000), so 4 x 400 = 1,600 (sharing capacity by milli would say 2,000)
    fours = [pod(f"f{i}", 400) for i in range(5)]
    assert upper_bound(TWO_T4, fours).allocated_milli == pytest.approx(1600)
    # two 600s and three 300s: each GPU takes a 600 and one 300 (600 + 2 x 300 > 1,000) =
    # 1,800; filling the two 400-milli holes by milli would say 2,000
    mixed = [pod("a", 600), pod("b", 600), *(pod(f"t{i}", 300) for i in range(3))]
    assert upper_bound(TWO_T4, mixed).allocated_milli == pytest.approx(1800)


def test_multi_gpu_pods_per_node_and_cpu() -> None:
    nodes = [NodeRow("a", 64000, 262144, 3, "G2"), NodeRow("b", 64000, 262144, 3, "G2")]
    twos = [pod(f"t{i}", 1000, num=2) for i in range(3)]
    # 3 two-GPU pods = 6 GPUs = capacity, but a 3-GPU node holds one of them: 2 x 2,000
    assert upper_bound(nodes, twos).allocated_milli == pytest.approx(4000)
    hungry = [pod(f"h{i}", 1000, cpu=40000) for i in range(6)]
    # 128,000 CPU in all: three 40,000-CPU pods (the LP does not see per-node granularity)
    assert upper_bound(nodes, hungry).allocated_milli == pytest.approx(3200)
    spec = [pod("s", 1000, spec="T4")]  # no T4 node: nothing can be placed
    assert upper_bound(nodes, spec).allocated_milli == pytest.approx(0)


def test_forced_pods_fit_at_arrival_whatever_came_before() -> None:
    seq = [pod("a", 810), pod("b", 810), pod("c", 1000)]
    forced = forced_kinds(TWO_T4, seq)
    # the first 810 meets an empty cluster; the second: one earlier pod can block one of the
    # two GPUs, not both; the whole-GPU pod: two earlier pods can take both GPUs
    assert forced == {pod_kind(seq[0]): 2}
    # all 2,620 milli arrived by 131 % (+0.5) of 2,000
    offline, protocol = trace_bounds(TWO_T4, seq, 2000, 131)
    # offline: the 1,000 pod and one 810 = 1,810; protocol: both 810s are placed = 1,620
    assert offline.ratio_pct == pytest.approx(90.5)
    assert protocol.ratio_pct == pytest.approx(81.0)
    assert protocol.forced_pods == 2


def test_blocking_lp_sees_that_one_pod_cannot_block_two_nodes() -> None:
    seq = [pod("a", 300), pod("b", 810), pod("c", 300), pod("d", 810)]
    # b: one 300 pod arrived before, it can block (every GPU > 190 used) one node of two: fits.
    # d: two 300 pods and an 810 could block both: not provably placed.
    assert forced_by_lp(TWO_T4, seq, [pod_kind(seq[1])]) == {pod_kind(seq[1]): 1}
    hog = PodRow("hog", 63500, 1024, 0, 0)  # CPU-only: 500 CPU left where it lands
    seq = [hog, pod("e", 810)]
    # the hog blocks one node by CPU (810 pod needs 1,000), the other node is free
    assert forced_by_lp(TWO_T4, seq, [pod_kind(seq[1])]) == {pod_kind(seq[1]): 1}
    seq = [hog, hog, pod("f", 810)]
    assert forced_by_lp(TWO_T4, seq, [pod_kind(seq[2])]) == {pod_kind(seq[2]): 0}
