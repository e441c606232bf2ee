"""Best-fit fast paths give the plans of the plain definition.

``bestfit.best_fit`` places a run of replicas of one model with one candidate test, scans only
the compact set of used GPUs that pass cheap necessary conditions, tries only the first empty
GPU of each class and builds Assignments without the validator. The reference below is the
definition, straight over every GPU one replica at a time: among the used GPUs the model may
use, the one with the highest load after adding the replica (at its best level, lowest index on
ties); else the same over the empty GPUs. Both must agree replica for replica, also after
removals (LNS) and with GPUs reserved through ``holds`` (online defragmentation). The
equivalence tests run twice: with the compiled kernel (``bestfit_kernel``) and with the numpy
path (``PackState.use_kernel``)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from stowplan.cli import main
from stowplan.fgdbench.synth import LatencyFit, synthetic_problem
from stowplan.placement.bestfit import best_fit, choose_gpu, decreasing_order
from stowplan.placement.holds import Holds
from stowplan.placement.models import (
    Assignment,
    Problem,
)
from stowplan.placement.packindex import PackIndex, Replica
from stowplan.placement.packing import PackState, trusted_assignment
from stowplan.placement.planner import split_placeable
from stowplan.testing.placement_problems import mixed_fleet, small_problems

FITS = [
    LatencyFit("a", "A100-80GB", 1.2, 0.05, 128),
    LatencyFit("b", "A100-80GB", 4.1, 0.5, 64),
    LatencyFit("c", "A100-80GB", 0.3, 0.9, 32),
    LatencyFit("d", "A100-80GB", 12.0, 0.02, 256),
]


def reference_choice(state: PackState, mi: int) -> int | None:
    """The definition of the best-fit choice, over every GPU (no candidate sets, no heaps)."""
    index = state.index
    allowed = index.eligible[mi] & ~state.holds[mi]
    for in_use in (True, False):
        cand = np.flatnonzero(allowed & ((state.count > 0) == in_use))
        if cand.size == 0:
            continue
        best = state.loads(mi, cand).min(axis=1)
        if np.isfinite(best).any():
            best[~np.isfinite(best)] = -1.0
            return int(cand[int(np.argmax(best))])
    return None


def reference_best_fit(state: PackState, order: list[Replica]) -> list[Replica]:
    left = []
    for rep in order:
        g = reference_choice(state, rep[0])
        if g is None:
            left.append(rep)
        else:
            state.add(rep, g)
    return left


def _mixed(base: Problem, seed: int, gpu_share: float) -> Problem:
    """Three GPU classes (two capacities), type and zone selectors, priorities, a reserve."""
    return mixed_fleet(base, max(8, int(len(base.gpus) * gpu_share)), random.Random(seed))


@pytest.fixture(params=["kernel", "numpy"])
def path(request: pytest.FixtureRequest) -> str:
    """Run the test with the compiled kernel (``bestfit_kernel``) and with the numpy path."""
    return str(request.param)


def _fast_and_reference(
    problem: Problem, path: str = "kernel"
) -> tuple[PackState, list[Replica], PackState, list]:
    index = PackIndex.build(problem)
    placeable, _ = split_placeable(index)
    todo = [(mi, r) for mi in placeable for r in range(index.models[mi].replicas)]
    order = decreasing_order(index, todo)
    fast = PackState(index, use_kernel=path == "kernel")
    ref = PackState(index)
    return fast, best_fit(fast, order), ref, reference_best_fit(ref, order)


def _same(a: PackState, b: PackState) -> None:
    assert a.where == b.where
    assert np.array_equal(a.rows, b.rows)
    assert a.assignments() == b.assignments()


def test_best_fit_equals_definition_on_synthetic_instances(path: str) -> None:
    for n, seed in ((300, 1), (1000, 2)):
        fast, left, ref, ref_left = _fast_and_reference(synthetic_problem(FITS, n, seed=seed), path)
        assert left == ref_left == []
        _same(fast, ref)


def test_best_fit_equals_definition_on_mixed_fleets_short_of_capacity(path: str) -> None:
    for share, seed in ((0.25, 3), (0.3, 4)):
        problem = _mixed(synthetic_problem(FITS, 400, seed=seed), seed, share)
        fast, left, ref, ref_left = _fast_and_reference(problem, path)
        assert left == ref_left
        assert left  # short of capacity: the no-fit paths run too
        _same(fast, ref)


def test_choices_agree_after_removals_and_reservations(path: str) -> None:
    rng = random.Random(5)
    for problem in (
        synthetic_problem(FITS, 300, seed=6),
        _mixed(synthetic_problem(FITS, 300, seed=7), 7, 0.5),
    ):
        fast, _, ref, _ = _fast_and_reference(problem, path)
        n_models = len(problem.models)
        for step in range(150):
            placed = sorted(fast.where)
            if placed and rng.random() < 0.5:  # LNS: take a replica out
                rep = rng.choice(placed)
                assert fast.remove(rep) == ref.remove(rep)
            if step % 10 == 0 and placed:  # online defrag / LNS: reserve GPUs for nobody
                g = fast.where[rng.choice(placed)]
                empty = np.flatnonzero(fast.count == 0)
                fast.holds[:, g] = ref.holds[:, g] = True
                if empty.size:
                    fast.holds[:, empty[0]] = ref.holds[:, empty[0]] = True
            if step % 7 == 0:  # a run of replicas of one model through best_fit
                mi = rng.randrange(n_models)
                run = [
                    (mi, r) for r in range(problem.models[mi].replicas) if (mi, r) not in fast.where
                ]
                assert best_fit(fast, run) == reference_best_fit(ref, run)
                _same(fast, ref)
            mi = rng.randrange(n_models)
            free = [
                (mi, r) for r in range(problem.models[mi].replicas) if (mi, r) not in fast.where
            ]
            g_fast, g_ref = choose_gpu(fast, mi), reference_choice(ref, mi)
            assert g_fast == g_ref
            if free and g_fast is not None and not fast.holds[mi, g_fast]:
                fast.add(free[0], g_fast)
                ref.add(free[0], g_ref)
        copy = fast.copy()
        assert copy.where == fast.where and choose_gpu(copy, 0) == choose_gpu(fast, 0)


def test_trusted_assignment_equals_the_validated_one() -> None:
    values = dict(
        model="m1",
        replica=2,
        node="n3",
        gpu=1,
        batch_size=7,
        duty_cycle_ms=12.0,
        busy_ms=3.25,
        memory_mib=1500.5,
    )
    fast, slow = trusted_assignment(**values), Assignment(**values)
    assert fast == slow and hash(fast) == hash(slow)
    assert fast.model_dump() == slow.model_dump()
    assert list(fast.model_dump()) == list(slow.model_dump())  # field order (JSON output)
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_copy(update={"gpu": 4}) == Assignment(**{**values, "gpu": 4})
    # and the ones a plan builds
    problem = synthetic_problem(FITS, 50, seed=8)
    state, _, _, _ = _fast_and_reference(problem)
    for a in state.assignments():
        assert Assignment(**a.model_dump()) == a


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(small_problems(max_gpus=10, max_models=8))
def test_best_fit_equals_definition_property(path: str, problem: Problem) -> None:
    fast, left, ref, ref_left = _fast_and_reference(problem, path)
    assert left == ref_left
    _same(fast, ref)


def test_holds_behaves_like_a_bool_matrix() -> None:
    rng = random.Random(11)
    n_models, n_gpus = 5, 7
    h, ref = Holds(n_models, n_gpus), np.zeros((n_models, n_gpus), dtype=bool)
    for _ in range(2000):
        mi, g, value = rng.randrange(n_models), rng.randrange(n_gpus), rng.random() < 0.6
        if rng.random() < 0.15:
            h[:, g] = ref[:, g] = value
        else:
            h[mi, g] = ref[mi, g] = value
        if rng.random() < 0.05:
            h = h.copy()
        gpus = np.asarray(rng.sample(range(n_gpus), 3), dtype=np.intp)
        assert h[mi, g] == ref[mi, g]
        assert np.array_equal(h[mi], ref[mi])
        assert np.array_equal(h.closed(mi, gpus), ref[mi, gpus])
        assert h.any_closed(mi) or not ref[mi].any()  # never misses one (may over-report)


DATA = Path(os.environ.get("STOWPLAN_DATA", Path.cwd().parent / "shared" / "data"))


@pytest.mark.skipif(not (DATA / "gpu-inference-latency").exists(), reason="fits not present")
def test_bench_bestfit_only_prints_the_speed_table() -> None:
    args = ["bench", "placement", "--bestfit-only", "--sizes", "100,300", "--repeat", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("| 100 |")]
    assert len(lines) == 1 and "| 300 |" in result.output
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert len(cells) == 8 and int(cells[2]) > 0 and float(cells[3]) <= float(cells[4])
    assert float(cells[7]) > 0  # first call in the process (compile or cache load)
    bad = CliRunner().invoke(main, ["bench", "placement", "--bestfit-only", "--sizes", "0"])
    assert bad.exit_code != 0 and "positive" in bad.output
