"""The verifier's own arithmetic agrees with the engine's: a replica the engine's capacity model
and GPU filter accept at a duty-cycle level is a plan ``check_plan`` accepts, one they refuse is
a plan it refuses, and a pinned replica may move exactly when the engine could not keep it alone
on its GPU. ``verify`` imports none of the engine's code (an import-linter contract), so these
are two derivations of DESIGN §3 checked against each other."""

from __future__ import annotations

from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from stowplan.placement import verify
from stowplan.placement.capacity import (
    DUTY_LEVELS_MS,
    EPS,
    batch_size,
    busy_ms,
    memory_mib,
    replica_capacity,
    replica_qps,
)
from stowplan.placement.filters import gpu_admits
from stowplan.placement.models import (
    Assignment,
    BatchingPolicy,
    Gpu,
    ModelDemand,
    Plan,
    Problem,
    Unplaced,
    UnplacedReason,
)
from stowplan.testing.placement_problems import demands, make_model

GPUS = st.builds(
    Gpu,
    node=st.just("n0"),
    index=st.just(0),
    memory_mib=st.sampled_from([8000, 16000, 40960, 81920]),
    gpu_type=st.sampled_from(["A100", "T4"]),
    labels=st.sampled_from([{}, {"zone": "a"}, {"zone": "b"}]),
)
RESERVES = st.sampled_from([0, 512])


def _in_verifier_slack(x: float, limit: float) -> bool:
    """``x`` over ``limit`` by more than the engine's slack but within the verifier's 1e-6
    (float noise the verifier forgives in plans made elsewhere; the engine never uses it)."""
    return limit * (1 + EPS) + EPS < x <= limit + 1e-6 * max(1.0, abs(limit))


def _engine_fits(m: ModelDemand, d: float, gpu: Gpu, reserve: int) -> bool:
    cap = replica_capacity(m, d)
    free = gpu.memory_mib - reserve
    return gpu_admits(gpu, m) and cap is not None and cap.memory_mib <= free + EPS


def _at_a_slack_edge(m: ModelDemand, d: float, gpu: Gpu, reserve: int) -> bool:
    t = busy_ms(m, d)
    return (
        _in_verifier_slack(t, d)
        or _in_verifier_slack(memory_mib(m, d), gpu.memory_mib - reserve)
        or (not m.gpu_milli and _in_verifier_slack(d + t, m.slo_ms))
    )


def _others_unplaced(m: ModelDemand, first: int) -> tuple[Unplaced, ...]:
    return tuple(
        Unplaced(model=m.name, replica=r, reason=UnplacedReason.NO_CAPACITY, message="")
        for r in range(first, m.replicas)
    )


def test_the_verifier_prices_at_the_engines_levels() -> None:
    assert verify._LEVELS_MS == DUTY_LEVELS_MS


def _at_level(m: ModelDemand, d: float, gpu: Gpu, batch: int | None = None) -> Assignment:
    """Replica 0 of ``m`` on ``gpu`` at level ``d`` with the engine's numbers (or ``batch``)."""
    b = batch_size(m, d) if batch is None else batch
    return Assignment(
        model=m.name,
        replica=0,
        node=gpu.node,
        gpu=gpu.index,
        batch_size=b,
        duty_cycle_ms=d,
        busy_ms=m.latency.base_ms + m.latency.per_item_ms * b if batch else busy_ms(m, d),
        memory_mib=m.memory.weights_mib + m.memory.per_item_mib * b if batch else memory_mib(m, d),
    )


def _alone(m: ModelDemand, one: Assignment, gpu: Gpu, reserve: int) -> list[verify.Violation]:
    problem = Problem(gpus=(gpu,), models=(m,), memory_reserve_mib=reserve)
    plan = Plan(
        assignments=(one,),
        unplaced=_others_unplaced(m, 1),
        gpus_used=1,
        lower_bound=0,
        solve_seconds=0,
    )
    return verify.check_plan(problem, plan)


@settings(max_examples=300, deadline=None)
@given(m=demands(), gpu=GPUS, reserve=RESERVES)
def test_engine_feasible_iff_verifier_feasible(m: ModelDemand, gpu: Gpu, reserve: int) -> None:
    # one replica alone on one GPU with the engine's numbers, at every level; the rest unplaced
    for d in DUTY_LEVELS_MS:
        if _at_a_slack_edge(m, d, gpu, reserve):
            continue
        violations = _alone(m, _at_level(m, d, gpu), gpu, reserve)
        fits = _engine_fits(m, d, gpu, reserve)
        event(f"engine fits: {fits}")
        assert (violations == []) == fits, (d, violations)


@settings(max_examples=200, deadline=None)
@given(m=demands(), gpu=GPUS, reserve=RESERVES)
def test_a_batch_smaller_than_a_cycles_requests_is_refused(
    m: ModelDemand, gpu: Gpu, reserve: int
) -> None:
    # aimd runs one batch per cycle: one item fewer than the cycle collects loses requests
    m = m.model_copy(
        update={"batching": BatchingPolicy.AIMD, "static_batch_size": 0, "gpu_milli": 0}
    )
    for d in DUTY_LEVELS_MS:
        b = batch_size(m, d)
        if b >= 2 and not _in_verifier_slack(replica_qps(m) * d / 1000.0, b - 1):
            codes = {v.code for v in _alone(m, _at_level(m, d, gpu, batch=b - 1), gpu, reserve)}
            assert "Throughput" in codes, (d, codes)


@settings(max_examples=400, deadline=None)
@given(m=demands(), gpu=GPUS, reserve=RESERVES)
@example(  # a batch over max_batch at every level where the time would fit: it cannot stay
    m=make_model("m", target_qps=10000, base_ms=1, per_item_ms=0.05, max_batch=4, slo_ms=100),
    gpu=Gpu(node="n0", index=0, memory_mib=16000, gpu_type="A100"),
    reserve=0,
)
def test_a_pinned_replica_may_move_iff_the_engine_could_not_keep_it(
    m: ModelDemand, gpu: Gpu, reserve: int
) -> None:
    m = m.model_copy(update={"gpus_per_replica": 1})
    assume(not any(_at_a_slack_edge(m, d, gpu, reserve) for d in DUTY_LEVELS_MS))
    current = Assignment(
        model=m.name,
        replica=0,
        node=gpu.node,
        gpu=gpu.index,
        batch_size=1,
        duty_cycle_ms=1.0,
        busy_ms=0.0,
        memory_mib=0.0,
    )
    problem = Problem(
        gpus=(gpu,),
        models=(m,),
        memory_reserve_mib=reserve,
        current=(current,),
        pinned=frozenset({(m.name, 0)}),
    )
    moved = Plan(
        assignments=(), unplaced=_others_unplaced(m, 0), gpus_used=0, lower_bound=0, solve_seconds=0
    )
    codes = {v.code for v in verify.check_plan(problem, moved)}
    could_stay = any(_engine_fits(m, d, gpu, reserve) for d in DUTY_LEVELS_MS)
    event(f"could stay: {could_stay}")
    assert ("PinnedMoved" in codes) == could_stay, codes
