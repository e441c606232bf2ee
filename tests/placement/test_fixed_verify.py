"""check_plan on fixed node demands: hand-made plans that break node CPU / host memory limits
or the multi-GPU ("gang") rules are caught, valid ones pass."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from stowplan.placement import Assignment, ModelDemand, Plan, Problem, check_plan
from stowplan.placement.models import NodeResources
from stowplan.testing.placement_problems import make_gpus, make_model

# two nodes n0, n1 with 4 GPUs of 16 GB each; n0 has 8 cores and 32 GiB, n1 is not listed
GPUS = make_gpus(8, memory_mib=16000, per_node=4)
NODES = (NodeResources(node="n0", cpu_milli=8000, memory_mib=32768),)


def _pod(name: str, **extra: Any) -> ModelDemand:
    """A trace-style fixed demand: no batching, a GPU fraction, no GPU memory."""
    return make_model(name, weights_mib=0, per_item_mib=0, target_qps=0, **extra)


def _a(
    model: str, node: str, gpu: int, *, replica: int = 0, extra: tuple[int, ...] = ()
) -> Assignment:
    # fixed demand at a 10 ms cycle: busy = gpu_milli / 1000 * 10 ms (set per test below)
    return Assignment(
        model=model,
        replica=replica,
        node=node,
        gpu=gpu,
        batch_size=0,
        duty_cycle_ms=10.0,
        busy_ms=10.0,
        memory_mib=0.0,
        extra_gpus=extra,
    )


def _plan(*assignments: Assignment) -> Plan:
    gpus = {k for a in assignments for k in a.gpu_keys}
    return Plan(assignments=assignments, gpus_used=len(gpus), lower_bound=0, solve_seconds=0)


def _codes(problem: Problem, plan: Plan) -> list[str]:
    return sorted(v.code for v in check_plan(problem, plan))


def test_gang_on_its_own_gpus_is_valid() -> None:
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=4, cpu_milli=4000)
    problem = Problem(gpus=GPUS, models=(gang,), nodes=NODES)
    assert _codes(problem, _plan(_a("gang", "n0", 0, extra=(1, 2, 3)))) == []


def test_gang_with_too_few_or_repeated_gpus() -> None:
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=4)
    problem = Problem(gpus=GPUS, models=(gang,))
    assert _codes(problem, _plan(_a("gang", "n0", 0, extra=(1, 2)))) == ["GangSize"]
    bad = _plan(_a("gang", "n0", 0, extra=(1, 2, 2)))
    assert "GangSize" in _codes(problem, bad)


def test_one_gpu_model_with_extra_gpus_is_refused() -> None:
    whole = _pod("whole", gpu_milli=1000)
    problem = Problem(gpus=GPUS, models=(whole,))
    assert _codes(problem, _plan(_a("whole", "n0", 0, extra=(1,)))) == ["GangSize"]


def test_gang_gpu_shared_with_a_fraction() -> None:
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2)
    frac = _pod("frac", gpu_milli=0 + 1)  # 1/1000 of a GPU: tiny but not exclusive
    problem = Problem(gpus=GPUS, models=(gang, frac))
    shared = _a("frac", "n0", 1).model_copy(update={"busy_ms": 0.01})
    codes = _codes(problem, _plan(_a("gang", "n0", 0, extra=(1,)), shared))
    # the cycle is overfull too (10 + 0.01 ms in 10 ms); the gang rule is reported on its own
    assert "GangShared" in codes


def test_gang_on_an_unknown_or_filtered_gpu() -> None:
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2, gpu_type="A100")
    gpus = (*GPUS[:3], GPUS[3].model_copy(update={"gpu_type": "T4"}))
    problem = Problem(gpus=gpus, models=(gang,))
    assert _codes(problem, _plan(_a("gang", "n0", 2, extra=(3,)))) == ["GpuFilter"]
    assert _codes(problem, _plan(_a("gang", "n0", 2, extra=(7,)))) == ["GpusUsed", "UnknownGpu"]


def test_node_cpu_and_memory_sums() -> None:
    a = _pod("a", gpu_milli=300, cpu_milli=5000, host_memory_mib=20000)
    b = _pod("b", gpu_milli=300, cpu_milli=4000, host_memory_mib=20000)
    problem = Problem(gpus=GPUS, models=(a, b), nodes=NODES)
    fixed = {"busy_ms": 3.0}
    pa = _a("a", "n0", 0).model_copy(update=fixed)
    # 5000 + 4000 CPU milli > 8000, 40000 MiB > 32768 on n0, even on different GPUs
    on_n0 = _plan(pa, _a("b", "n0", 1).model_copy(update=fixed))
    assert _codes(problem, on_n0) == ["NodeCpu", "NodeMemory"]
    # n1 is not listed: no limit
    assert _codes(problem, _plan(pa, _a("b", "n1", 0).model_copy(update=fixed))) == []


def test_gang_counts_cpu_once_per_replica() -> None:
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=4, cpu_milli=8000)
    problem = Problem(gpus=GPUS, models=(gang,), nodes=NODES)
    assert _codes(problem, _plan(_a("gang", "n0", 0, extra=(1, 2, 3)))) == []


def test_moving_a_gang_is_a_move_and_a_pinned_gang_must_stay() -> None:
    gang = _pod("gang", gpu_milli=1000, gpus_per_replica=2)
    here = _a("gang", "n0", 0, extra=(1,))
    problem = Problem(gpus=GPUS, models=(gang,), current=(here,), pinned=frozenset({("gang", 0)}))
    same_set = _a("gang", "n0", 1, extra=(0,))  # same GPUs in another order: not a move
    assert _codes(problem, _plan(same_set)) == []
    moved = _plan(_a("gang", "n0", 0, extra=(2,))).model_copy(update={"moves": 1})
    assert _codes(problem, moved) == ["PinnedMoved"]


def test_contract_validation() -> None:
    with pytest.raises(ValidationError, match="gpu_milli=1000"):
        make_model("g", gpu_milli=500, gpus_per_replica=2)
    with pytest.raises(ValidationError):
        make_model("g", gpu_milli=1000, gpus_per_replica=17)
    with pytest.raises(ValidationError, match="listed twice"):
        Problem(gpus=GPUS, models=(), nodes=(NODES[0], NODES[0]))
    with pytest.raises(ValidationError):
        NodeResources(node="n0", cpu_milli=-1, memory_mib=0)
