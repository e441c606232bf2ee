"""The GPU-sharing trace simulator: arrival protocol, fit rules, policies and defragmentation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from stowplan.cli import main
from stowplan.fgdbench.tracecluster import Cluster, FragModel, NodeRow, PodRow, arrivals
from stowplan.fgdbench.tracesim import Simulator
from stowplan.testing.clock import TickingClock

fake_clock = TickingClock()

NODES = [
    NodeRow("a", 16000, 65536, 2, "T4"),
    NodeRow("b", 16000, 65536, 2, "V100M16"),
]


def pod(name: str, milli: int, num: int = 1, cpu: int = 1000, spec: str = "") -> PodRow:
    return PodRow(name, cpu, 1024, num, milli, spec)


def test_arrivals_inflate_to_130_percent_and_trim() -> None:
    pods = [pod(f"p{i}", 500) for i in range(4)]  # 2,000 milli of 4,000 capacity
    seq = arrivals(pods, 4000, seed=42)
    total = sum(p.gpu_request for p in seq)
    # inflated until the next draw would overshoot 130 % of 4,000 = 5,200 milli
    assert 5200 - 500 < total <= 5200
    assert set(seq[:4]) == set(pods)
    big = [pod(f"q{i}", 1000, num=2) for i in range(6)]  # 12,000 milli -> trimmed
    assert sum(p.gpu_request for p in arrivals(big, 4000, seed=1)) <= 5200


def test_fit_rules_type_cpu_and_whole_gpus() -> None:
    c = Cluster(NODES)
    spec_t4 = c.spec_mask("T4")
    assert c.feasible(pod("x", 500, spec="T4"), spec_t4).tolist() == [True, False]
    too_much_cpu = pod("y", 500, cpu=20000)
    assert not c.feasible(too_much_cpu, c.spec_mask("")).any()
    c.place(0, pod("z", 300), [0])
    # a 2-GPU pod needs two completely free GPUs: node a has only one now
    assert c.feasible(pod("w", 1000, num=2), c.spec_mask("")).tolist() == [False, True]


def test_frag_model_counts_unusable_idle_gpu() -> None:
    typical = [pod("t", 600)]
    frag = FragModel(typical, ["T4"])
    # one GPU with 500 left (a 600 task cannot use it), one free GPU (usable): frag = 500
    assert frag.frag((0, 16000, 500, 1000)) == pytest.approx(500)
    # no CPU left: nothing is usable, all 1,500 idle milli is fragment
    assert frag.frag((0, 0, 500, 1000)) == pytest.approx(1500)


@pytest.mark.parametrize("policy", ["bestfit", "fgd", "stowplan"])
def test_policies_pack_a_small_cluster(policy: str) -> None:
    pods = [pod("a", 600), pod("b", 400), pod("c", 1000), pod("d", 1000), pod("e", 500)]
    sim = Simulator(NODES, pods, policy, seed=42)
    res = sim.run(pods, "toy", 42, fake_clock)
    # 600 + 400 share one GPU, the two whole pods take two more, 500 the last one
    assert res.placed == 5 and res.failed == 0
    assert sim.cluster.allocated_milli() == 3500


def test_defrag_moves_a_cpu_only_pod_to_free_stranded_gpus() -> None:
    nodes = [NodeRow("a", 8000, 65536, 1, "T4"), NodeRow("b", 8000, 65536, 0, "")]
    cpu_hog = PodRow("hog", 6000, 1024, 0, 0)
    gpu_pod = PodRow("g", 4000, 1024, 1, 1000)
    # the hog already sits on the GPU node (placed there earlier): 8,000 - 6,000 = 2,000 CPU
    # left, so the GPU pod (4,000 CPU) cannot land although the GPU is free
    plain = Simulator(nodes, [gpu_pod], "bestfit", seed=42)
    plain._commit(0, cpu_hog, [])
    assert plain.run([gpu_pod], "toy", 42, fake_clock).failed == 1
    sim = Simulator(nodes, [gpu_pod], "bestfit", seed=42, defrag_moves=1)
    sim._commit(0, cpu_hog, [])
    res = sim.run([gpu_pod], "toy", 42, fake_clock)
    # one move: the hog goes to the CPU-only node, the GPU pod takes the GPU
    assert res.failed == 0 and res.moves == 1


DATA = Path(os.environ.get("STOWPLAN_DATA", Path.cwd().parent / "shared" / "data"))


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "alibaba-gpu-v2023").exists(), reason="trace data not present")
def test_bench_fgd_quick_smoke() -> None:
    result = CliRunner().invoke(main, ["bench", "fgd", "--quick"])
    assert result.exit_code == 0, result.output
    assert "| default |" in result.output and "FGD" in result.output


@pytest.mark.skipif(not (DATA / "gpu-inference-latency").exists(), reason="fits not present")
def test_bench_placement_quick_smoke() -> None:
    result = CliRunner().invoke(
        main, ["bench", "placement", "--sizes", "50", "--time-limit", "0.5"]
    )
    assert result.exit_code == 0, result.output
    assert "| 50 |" in result.output


def test_defrag_clears_the_gpus_a_multi_gpu_pod_lacks() -> None:
    whole, share = pod("x", 1000), pod("y", 300)
    two = pod("two", 1000, num=2)
    plain = Simulator(NODES, [two], "stowplan", seed=42)
    plain._commit(0, whole, [0])
    plain._commit(1, share, [0])
    # each node has one free GPU: the 2-GPU pod fits nowhere
    assert plain.run([two], "toy", 42, fake_clock).failed == 1
    sim = Simulator(NODES, [two], "stowplan", seed=42, defrag_moves=1)
    sim._commit(0, whole, [0])
    sim._commit(1, share, [0])
    res = sim.run([two], "toy", 42, fake_clock)
    # one pod moves next to the other; its node's two GPUs take the 2-GPU pod
    assert res.failed == 0 and res.moves == 1
    assert sim.cluster.allocated_milli() == 3300


def test_defrag_fills_the_hole_beside_a_large_pod_with_a_small_pod_from_elsewhere() -> None:
    nodes = [NodeRow("a", 16000, 65536, 1, "T4"), NodeRow("b", 16000, 65536, 2, "V100M16")]
    small, large = pod("s", 160), pod("l", 810, spec="T4")
    typical = [small, large, pod("w", 1000)]
    sim = Simulator(nodes, typical, "stowplan", seed=42, defrag_moves=1)
    sim._commit(1, small, [0])  # the 160 pod alone on a GPU of node b
    res = sim.run([large], "toy", 42, fake_clock)
    # the 810 pod takes node a's GPU (190 left); the 160 pod moves into that hole, which
    # gives node b two whole GPUs again
    assert res.moves == 1
    assert sim.cluster.left[0, 0] == 30 and sim.cluster.left[1, :2].tolist() == [1000, 1000]
