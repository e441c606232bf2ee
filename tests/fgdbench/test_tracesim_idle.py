"""Idle GPU breakdown of a final trace-simulator state: by cause, summing to the idle milli."""

from __future__ import annotations

from stowplan.fgdbench.tracecluster import NodeRow, PodRow
from stowplan.fgdbench.tracesim import Simulator


def test_idle_breakdown_splits_holes_partial_stranded_and_free() -> None:
    nodes = [
        NodeRow("a", 16000, 65536, 2, "T4"),
        NodeRow("b", 4000, 65536, 1, "T4"),
        NodeRow("c", 16000, 65536, 1, "T4"),
    ]
    big, small = PodRow("big", 1000, 1024, 1, 810), PodRow("small", 1000, 1024, 1, 300)
    hog = PodRow("hog", 3500, 1024, 0, 0)  # CPU-only: node b keeps 500 CPU < every GPU pod's
    sim = Simulator(nodes, [big, small, hog], "bestfit", seed=42)
    sim._commit(0, big, [0])
    sim._commit(0, small, [1])
    sim._commit(1, hog, [])
    b = sim.run([], "toy", 42, lambda: 0.0).idle
    assert b is not None
    assert (b.large_share_gpus, b.large_share_milli) == (1, 190)
    assert b.other_partial_milli == 700
    assert b.stranded_free_milli == 1000  # node b: a free GPU but no CPU left
    assert b.free_milli == 1000  # node c
    assert sum(
        (b.large_share_milli, b.other_partial_milli, b.stranded_free_milli, b.free_milli)
    ) == (sim.cluster.capacity_milli - sim.cluster.allocated_milli())
