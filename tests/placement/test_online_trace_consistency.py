"""The engine's online mode is the benchmarked policy: ``place_arrivals`` and the trace
simulator's ``stowplan`` policy make the same choice for every arrival of the real trace.

A cluster of real nodes (every 20th row of the Alibaba 2023 GPU node list: G2/G3 8-GPU, T4,
P100 and V100 nodes) and the GPU pods of one seed's arrival sequence (up to 130 % of its
capacity; CPU-only pods are left out: the engine has no replica without a GPU). The simulator
runs with the identity node order (the engine breaks ties by node position). The engine gets,
per arrival, the previous plan as ``current`` and one new one-replica model for the pod; the
task distribution is the workload's pod kinds, as the simulator's. Skipped without the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stowplan.fgdbench.synth import pod_demand
from stowplan.fgdbench.tracecluster import Cluster, NodeRow, arrivals
from stowplan.fgdbench.tracefiles import load_nodes, load_pods
from stowplan.fgdbench.tracesim import Simulator
from stowplan.placement import (
    Gpu,
    ModelDemand,
    Problem,
    check_plan,
    place_arrivals,
)
from stowplan.placement.models import Assignment, NodeResources

DATA = Path(os.environ.get("STOWPLAN_DATA", Path.cwd().parent / "shared" / "data"))
TRACE = DATA / "alibaba-gpu-v2023"
MAX_PODS = 600


def _left_per_node(
    nodes: list[NodeRow], milli: dict[str, int], assignments: tuple[Assignment, ...]
) -> dict[str, list[int]]:
    left = {n.name: [1000] * n.gpus for n in nodes}
    for a in assignments:
        for g in (a.gpu, *a.extra_gpus):
            left[a.node][g] -= milli[a.model]
    return left


@pytest.mark.skipif(not TRACE.exists(), reason="Alibaba GPU trace not present")
@pytest.mark.parametrize("workload", ["default", "multigpu50", "gpushare100"])
def test_place_arrivals_follows_the_simulator_arrival_by_arrival(workload: str) -> None:
    nodes = load_nodes(TRACE / "openb_node_list_gpu_node.csv")[::20]
    pods = load_pods(TRACE / f"openb_pod_list_{workload}.csv")
    cap = Cluster(nodes).capacity_milli
    seq = [p for p in arrivals(pods, cap, seed=42) if p.num_gpu > 0][:MAX_PODS]
    sim = Simulator(nodes, pods, "stowplan", seed=42, node_order=range(len(nodes)))
    kinds = [p.kind for p in pods]  # the simulator's task distribution (CPU-only pods weigh in)
    gpus = tuple(
        Gpu(node=n.name, index=g, memory_mib=16384, gpu_type=n.model)
        for n in nodes
        for g in range(n.gpus)
    )
    limits = tuple(
        NodeResources(node=n.name, cpu_milli=n.cpu_milli, memory_mib=n.memory_mib) for n in nodes
    )
    models: list[ModelDemand] = []
    milli: dict[str, int] = {}
    current: tuple[Assignment, ...] = ()
    placed = failed = gangs = 0
    for t, pod in enumerate(seq):
        name = f"pod{t:04d}"
        milli[name] = pod.gpu_milli
        problem = Problem(
            gpus=gpus, models=(*models, pod_demand(name, pod)), current=current, nodes=limits
        )
        out = place_arrivals(problem, workload=kinds)
        assert out.moves == 0
        mine = [a for a in out.assignments if a.model == name]
        want = sim.step(pod)
        if want is None:
            assert mine == [], f"arrival {t} ({pod}): the engine placed what the simulator refused"
            failed += 1
            continue
        assert mine, f"arrival {t} ({pod}): the simulator placed it on {nodes[want[0]].name}"
        a = mine[0]
        assert (a.node, sorted((a.gpu, *a.extra_gpus))) == (nodes[want[0]].name, sorted(want[1])), (
            f"arrival {t} ({pod})"
        )
        placed += 1
        gangs += pod.num_gpu > 1
        models.append(problem.models[-1])
        current = out.assignments
        if placed % 50 == 1:
            assert check_plan(problem, out) == []
    assert check_plan(problem, out) == []
    left = _left_per_node(nodes, milli, current)
    assert left == {n.name: sim.cluster.left[i, : n.gpus].tolist() for i, n in enumerate(nodes)}
    assert failed > 50 and placed > 200  # the runs reach a full cluster (default: 333 and 123)
    if workload == "multigpu50":
        assert gangs > 10
