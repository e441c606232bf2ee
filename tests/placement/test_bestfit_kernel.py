"""The compiled best-fit kernel (``bestfit_kernel``) gives exactly the plans of the numpy path.

``plan(problem)`` with the kernel and with ``use_kernel=False`` must return equal plans
(assignments, unplaced replicas, GPUs used): on synthetic instances, the committed instances in
``placement/instances/``, the benchmark instances (real latency fits, 50 to 10,000
replicas), a mixed fleet short of capacity (several GPU classes, selectors,
priorities) and an operator pass that keeps current assignments (closed GPUs at the start)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from stowplan import placement
from stowplan.fgdbench.synth import LatencyFit, synthetic_problem, usable_fits
from stowplan.placement.bestfit import kernel_status
from stowplan.placement.instances import read_instance
from stowplan.placement.models import Plan, Problem
from stowplan.testing.placement_problems import mixed_fleet

FITS = [
    LatencyFit("a", "A100-80GB", 1.2, 0.05, 128),
    LatencyFit("b", "A100-80GB", 4.1, 0.5, 64),
    LatencyFit("c", "A100-80GB", 0.3, 0.9, 32),
    LatencyFit("d", "A100-80GB", 12.0, 0.02, 256),
]
DATA = Path(os.environ.get("STOWPLAN_DATA", Path.cwd().parent / "shared" / "data"))
FITS_CSV = DATA / "gpu-inference-latency" / "latency_vs_batch_linear_fits.csv"
INSTANCES = sorted((Path(__file__).parents[2] / "placement" / "instances").glob("*.json"))

pytest.importorskip("numba")


def _both(problem: Problem, monkeypatch: pytest.MonkeyPatch) -> tuple[Plan, Plan]:
    slow = placement.plan(problem, use_kernel=False)
    assert kernel_status().startswith("compiled kernel")
    return slow, placement.plan(problem)


def _same(a: Plan, b: Plan) -> None:
    assert a.assignments == b.assignments
    assert a.unplaced == b.unplaced
    assert a.gpus_used == b.gpus_used


@pytest.mark.parametrize("n", [50, 200, 1000, 3000])
def test_kernel_plans_equal_numpy_plans_on_synthetic_instances(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _same(*_both(synthetic_problem(FITS, n, seed=1), monkeypatch))


@pytest.mark.skipif(not FITS_CSV.exists(), reason="latency fits not present")
def test_kernel_plans_equal_numpy_plans_on_the_benchmark_instances(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stowplan.fgdbench.tracefiles import load_fits

    fits = usable_fits(load_fits(FITS_CSV))
    for n in (50, 200, 1000, 3000, 10000):  # what ``stowplan bench placement`` builds
        _same(*_both(synthetic_problem(fits, n, seed=1), monkeypatch))


@pytest.mark.parametrize("path", INSTANCES, ids=lambda p: p.name)
def test_kernel_plans_equal_numpy_plans_on_committed_instances(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = read_instance(path)
    _same(*_both(problem, monkeypatch))


def test_kernel_plans_equal_on_a_mixed_fleet_short_of_capacity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = synthetic_problem(FITS, 600, seed=3)
    problem = mixed_fleet(base, len(base.gpus) // 4, random.Random(3))
    slow, fast = _both(problem, monkeypatch)
    assert slow.unplaced  # the no-fit paths ran
    _same(slow, fast)


def test_kernel_plans_equal_on_an_operator_pass_with_current_assignments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problem = synthetic_problem(FITS, 1000, seed=4)
    first = placement.plan(problem)
    rng = random.Random(4)
    kept = tuple(a for a in first.assignments if rng.random() < 0.6)
    grown = tuple(
        m.model_copy(update={"replicas": m.replicas + rng.choice((0, 0, 1, 2))})
        for m in problem.models
    )
    again = problem.model_copy(update={"current": kept, "models": grown})
    slow, fast = _both(again, monkeypatch)
    _same(slow, fast)
    assert fast.moves == slow.moves
