"""Plan = runtime, in simulated time: random InferenceModel specs (every batching policy) are
placed, each placed replica goes through the one translation (spec -> demand -> plan -> GPUNode
assignment -> agent config -> the agent's own batch policy) and the agent's scheduler and
batching code (:mod:`stowplan.agentbench.simulate`: the real ``SliceScheduler``, ``BatchQueue``
and policies, simulated device time) is fed the planned load. Every placed replica starts AIMD
at the planned batch, within the agent's target, meets the SLO the plan assumed (>= 99 % of
requests) and stays within the GPU time per cycle the plan budgeted (+5 %; the executor keeps
each lane's budget per cycle, issue 14 item 5); what the plan refuses is not simulated. The
budget holds the batches run under it: a lane alone with a batch ready on an idle device may
run it beyond its budget within the cycle's slack (spare time, which no neighbour's plan
claims), and that time is counted apart. The worst ratio of budgeted GPU time to plan per
cycle is printed (``pytest -s``), and the worst of all GPU time, spare included, and the
lowest share of a replica's requests answered within its SLO. Plus the
algebra that makes plan and agent agree by construction, and each replica lane of one agent
serving its own plan."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowplan import placement, slo
from stowplan.agent.batching import AimdController, make_policy
from stowplan.agent.config import AgentSettings, Policy, model_config
from stowplan.agent.serving import Agent
from stowplan.agent.telemetry import SimulatedTelemetry
from stowplan.agentbench.simulate import SimModel, SimResult, simulate
from stowplan.api.inferencemodel import BatchingPolicy, InferenceModelSpec, ModelSource
from stowplan.demands import model_demand, node_assignment
from stowplan.placement.verify import check_plan

CYCLES = 300  # simulated duty cycles per GPU
BUDGET_SLACK = 1.05  # the agent may use at most 5 % more GPU time per cycle than planned
#: the worst (budgeted GPU time used less one batch) / (budget x cycles) over the examples run
WORST_RATIO = [0.0]
#: the same with spare time (beyond the budget, in the cycle's slack) included
WORST_TOTAL_RATIO = [0.0]
#: the share of a placed replica's requests answered within its SLO, per replica simulated
ATTAINMENTS: list[float] = []


@st.composite
def specs(draw: st.DrawFn) -> InferenceModelSpec:
    policy = draw(st.sampled_from(["aimd", "static", "none"]))
    max_batch = draw(st.integers(1, 32))
    batching: dict[str, Any] = {
        "policy": policy,
        "maxQueueDelayMs": draw(st.sampled_from([0.0, 1.0, 5.0, 30.0])),
    }
    if policy == "static":
        batching["staticBatchSize"] = draw(st.integers(1, max_batch))
    return InferenceModelSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.onnx"},
            "replicas": draw(st.integers(1, 3)),
            "slo": {
                "latencyMs": draw(st.floats(5.0, 300.0)),
                "targetQPS": draw(st.floats(1.0, 1500.0)),
            },
            "profile": {
                "latencyMs": {
                    "base": draw(st.floats(0.1, 4.0)),
                    "perItem": draw(st.floats(0.01, 1.0)),
                },
                "memoryMiB": {"weights": 100, "perItem": 1},
                "maxBatch": max_batch,
            },
            "batching": batching,
            "priority": draw(st.integers(-5, 5)),
        }
    )


def _even_arrivals(qps: float, duration_s: float, phase: float) -> list[float]:
    """The planned load: ``qps`` requests per second, evenly spaced, from a phase in [0, 1)."""
    gap = 1.0 / qps
    n = int(duration_s * qps)
    return [(i + phase) * gap for i in range(n)]


Outcome = tuple[placement.Assignment, InferenceModelSpec, SimResult, float]


def _serve_the_plan(models: list[InferenceModelSpec], n_gpus: int, phase: float) -> list[Outcome]:
    """Place ``models`` on ``n_gpus`` GPUs, configure each placed replica through the one
    translation and the agent's own policy factory, simulate each GPU at the planned load;
    (assignment, spec, result, cycle) per placed replica."""
    by_name = {f"m{i}": spec for i, spec in enumerate(models)}
    problem = placement.Problem(
        gpus=tuple(placement.Gpu(node="n", index=i, memory_mib=80_000) for i in range(n_gpus)),
        models=tuple(model_demand(name, spec) for name, spec in by_name.items()),
    )
    plan = placement.plan(problem)
    assert check_plan(problem, plan) == []
    per_gpu: dict[int, list[placement.Assignment]] = defaultdict(list)
    for a in plan.assignments:
        per_gpu[a.gpu].append(a)
    out: list[Outcome] = []
    for assignments in per_gpu.values():
        cycle_ms = assignments[0].duty_cycle_ms
        duration_s = CYCLES * cycle_ms / 1000.0
        sims, planned = [], {}
        for a in assignments:
            spec = by_name[a.model]
            # the one translation, then the policy exactly as the agent's registry builds it
            cfg = model_config(f"{a.model}.{a.replica}", [node_assignment(spec, a)])
            assert (cfg.duty_cycle_ms, cfg.busy_ms, cfg.planned_batch) == (
                a.duty_cycle_ms, round(a.busy_ms, 6), a.batch_size,
            )  # fmt: skip

            def policy(cfg: Any = cfg) -> Any:
                return make_policy(
                    cfg.batching, cfg.max_batch, cfg.slo_ms, cfg.duty_cycle_ms, cfg.busy_ms,
                    cfg.planned_batch,
                )  # fmt: skip

            first = policy()
            if cfg.batching.policy is Policy.AIMD:
                assert isinstance(first, AimdController)
                assert first.cap == a.batch_size  # AIMD starts at the planned batch
                assert first.target_ms >= a.busy_ms * (1 - 1e-9)  # and the plan is within target
            qps = slo.per_replica_qps(spec.slo.target_qps, spec.replicas)
            sims.append(
                SimModel(
                    cfg.name,
                    spec.profile.latency_ms.base_ms,
                    spec.profile.latency_ms.per_item_ms,
                    cfg.slo_ms,
                    _even_arrivals(qps, duration_s, phase),
                    policy,
                    cfg.busy_ms,
                )
            )
            planned[cfg.name] = (a, spec)
        results = simulate(sims, "sliced", cycle_ms=cycle_ms, jitter=0.0)
        out += [(*planned[name], res, cycle_ms) for name, res in results.items()]
    return out


FLEETS = {
    "models": st.lists(specs(), min_size=1, max_size=4),
    "n_gpus": st.integers(1, 3),
    "phase": st.floats(0.0, 0.99),
}
# derandomized: the same 40 examples every run (the cycle-end fleets below came from seed 2).
# STOWPLAN_PROPERTY_EXAMPLES=150 with --hypothesis-seed=N explores other fleets.
_EXPLORE = int(os.environ.get("STOWPLAN_PROPERTY_EXAMPLES", "0"))
PROPERTY = settings(
    max_examples=_EXPLORE or 40,
    deadline=None,
    derandomize=not _EXPLORE,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(**FLEETS)
def test_the_agent_configured_from_the_plan_uses_the_gpu_time_the_plan_budgeted(
    models: list[InferenceModelSpec], n_gpus: int, phase: float
) -> None:
    for a, spec, res, cycle_ms in _serve_the_plan(models, n_gpus, phase):
        lat = spec.profile.latency_ms
        total_ms = res.batches * lat.base_ms + res.items * lat.per_item_ms
        budgeted = res.batches - res.spare_batches
        gpu_ms = budgeted * lat.base_ms + (res.items - res.spare_items) * lat.per_item_ms
        cycles = res.duration_s * 1000.0 / cycle_ms
        one_batch_ms = gpu_ms / max(budgeted, 1)  # the run cut off by the end of arrivals
        if cycles > 0 and a.busy_ms > 0:
            ratio = (gpu_ms - one_batch_ms) / cycles / a.busy_ms
            WORST_RATIO[0] = max(WORST_RATIO[0], ratio)
            total = (total_ms - total_ms / max(res.batches, 1)) / cycles / a.busy_ms
            WORST_TOTAL_RATIO[0] = max(WORST_TOTAL_RATIO[0], total)
        assert gpu_ms <= a.busy_ms * BUDGET_SLACK * cycles + one_batch_ms, (a, gpu_ms / cycles)


@pytest.fixture(scope="module", autouse=True)
def _print_the_worst_gpu_time_ratio() -> Iterator[None]:
    yield
    if WORST_RATIO[0] > 0:
        print(
            f"\nworst budgeted GPU time per cycle used / planned: {WORST_RATIO[0]:.4f}"
            f" (spare time included: {WORST_TOTAL_RATIO[0]:.4f})"
        )
    if ATTAINMENTS:
        print(f"worst share of a replica's requests within its SLO: {min(ATTAINMENTS):.4f}")


@PROPERTY
@given(**FLEETS)
def test_the_agent_configured_from_the_plan_meets_the_slo_the_plan_assumed(
    models: list[InferenceModelSpec], n_gpus: int, phase: float
) -> None:
    for a, _, res, _ in _serve_the_plan(models, n_gpus, phase):
        ATTAINMENTS.append(res.attainment)
        assert res.attainment >= 0.99, (a, res.attainment, res.dropped)


@given(
    slo_ms=st.floats(1.0, 1000.0),
    cycle_ms=st.floats(0.1, 1000.0),
    busy_share=st.floats(0.0, 1.0),
    wait_ms=st.floats(0.0, 100.0),
)
def test_the_agents_target_admits_the_planned_batch_exactly_when_the_plan_meets_the_slo(
    slo_ms: float, cycle_ms: float, busy_share: float, wait_ms: float
) -> None:
    busy_ms = busy_share * cycle_ms
    # the cycle is the lane's collection window: only the wait beyond it adds (as config does)
    extra_ms = slo.wait_beyond_cycle_ms(wait_ms, cycle_ms)
    target = slo.batch_target_ms(slo_ms, cycle_ms, busy_ms, extra_ms)
    # the target is the largest batch time whose worst case meets the SLO ...
    others = cycle_ms - busy_ms
    if target > 0.05 * slo_ms:
        assert slo.worst_latency_ms(target, others, extra_ms) <= slo_ms * (1 + 1e-9)
        assert slo.worst_latency_ms(target * 1.001, others, extra_ms) > slo_ms
    # ... so a plan that meets the SLO never asks for a batch above the agent's target
    if slo.meets_slo(slo_ms, cycle_ms, busy_ms, wait_ms):
        assert target >= busy_ms * (1 - 1e-9)
    elif busy_ms > 0.05 * slo_ms:
        assert target < busy_ms


def test_the_plan_counts_the_batch_fill_wait() -> None:
    spec = InferenceModelSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.onnx"},
            "slo": {"latencyMs": 12, "targetQPS": 100},
            "profile": {
                "latencyMs": {"base": 2, "perItem": 0.5},
                "memoryMiB": {"weights": 1, "perItem": 0},
                "maxBatch": 8,
            },
            "batching": {"policy": "aimd", "maxQueueDelayMs": 10},
        }
    )
    demand = model_demand("m", spec)
    assert demand.max_queue_delay_ms == 10
    # at d = 5 ms a batch of 1 takes 2.5 ms: d + t fits 12 ms, but the 10 ms fill wait does not
    assert placement.replica_capacity(demand, 5.0) is None
    assert placement.replica_capacity(demand.model_copy(update={"max_queue_delay_ms": 0}), 5.0)
    # policy none never waits to fill a batch, so nothing is charged for it
    none = model_demand("m", spec.model_copy(update={"batching": spec.batching.model_copy(
        update={"policy": BatchingPolicy.NONE})}))  # fmt: skip
    assert none.max_queue_delay_ms == 0


def _spec(**kw: Any) -> InferenceModelSpec:
    slo_ms, qps, replicas, base, per, max_batch, wait = (
        kw["slo"], kw["qps"], kw["replicas"], kw["base"], kw["per"], kw["max_batch"], kw["wait"],
    )  # fmt: skip
    return InferenceModelSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.onnx"},
            "replicas": replicas,
            "slo": {"latencyMs": slo_ms, "targetQPS": qps},
            "profile": {
                "latencyMs": {"base": base, "perItem": per},
                "memoryMiB": {"weights": 100, "perItem": 1},
                "maxBatch": max_batch,
            },
            "batching": {"policy": "aimd", "maxQueueDelayMs": wait},
        }
    )


def test_a_tightly_planned_aimd_lane_keeps_serving() -> None:
    by_name = {
        "m0": _spec(slo=14.2068, qps=566.77, replicas=2, base=2.94483, per=0.327798,
                    max_batch=29, wait=0.0),
        "m1": _spec(slo=30.0, qps=542.455, replicas=1, base=0.56718, per=0.638661,
                    max_batch=8, wait=5.0),
    }  # fmt: skip
    problem = placement.Problem(
        gpus=(placement.Gpu(node="n", index=0, memory_mib=80_000),),
        models=tuple(model_demand(name, spec) for name, spec in by_name.items()),
    )
    plan = placement.plan(problem)
    on_gpu = [a for a in plan.assignments if a.gpu == 0 and a.replica == 0]
    cycle_ms = on_gpu[0].duty_cycle_ms
    sims = []
    for a in on_gpu:
        spec = by_name[a.model]
        cfg = model_config(a.model, [node_assignment(spec, a)])
        sims.append(
            SimModel(
                cfg.name,
                spec.profile.latency_ms.base_ms,
                spec.profile.latency_ms.per_item_ms,
                cfg.slo_ms,
                _even_arrivals(spec.slo.target_qps / spec.replicas, 3.0, 0.0),
                lambda cfg=cfg: make_policy(
                    cfg.batching, cfg.max_batch, cfg.slo_ms, cfg.duty_cycle_ms, cfg.busy_ms,
                    cfg.planned_batch,
                ),
                cfg.busy_ms,
            )
        )  # fmt: skip
    results = simulate(sims, "sliced", cycle_ms=cycle_ms, jitter=0.0)
    assert min(r.attainment for r in results.values()) >= 0.99


def test_each_replica_lane_of_one_agent_serves_its_own_plan(
    model_dir: Path, tmp_path: Path
) -> None:
    """Two replicas of one model on two GPUs of one node, planned at different duty cycles
    and batches: each lane gets its own budget, batch-fill wait, AIMD start and target, not
    the first replica's."""
    spec = _spec(slo=60.0, qps=400.0, replicas=2, base=1.0, per=0.2, max_batch=16, wait=5.0)
    spec = spec.model_copy(update={"model": ModelSource(uri=f"file://{model_dir / 'mlp.onnx'}")})
    planned = [  # replica 0 at 10 ms (batch 2), replica 1 at 40 ms (batch 8)
        placement.Assignment(model="m", replica=0, node="n", gpu=0, batch_size=2,
                             duty_cycle_ms=10.0, busy_ms=1.4, memory_mib=102.0),
        placement.Assignment(model="m", replica=1, node="n", gpu=1, batch_size=8,
                             duty_cycle_ms=40.0, busy_ms=2.6, memory_mib=108.0),
    ]  # fmt: skip
    cfg = model_config("m", [node_assignment(spec, a) for a in planned])
    (slot,) = cfg.replicas
    assert slot.batching is not None and slot.batching != cfg.batching
    agent = Agent(
        AgentSettings(cache_dir=tmp_path, memory_pool_fraction=0.0, intra_op_threads=1),
        telemetry=SimulatedTelemetry(count=2),
    )
    try:
        agent.load(cfg)
        for a in planned:
            lane = agent.executor(a.gpu).lane("m")
            assert lane is not None
            policy = lane.queue.policy
            assert isinstance(policy, AimdController)
            assert lane.budget_s == pytest.approx(a.busy_ms / 1000.0)
            assert policy.cap == a.batch_size  # AIMD starts at this replica's planned batch
            # the batch-fill wait is this replica's cycle, the target its own plan's
            assert policy.max_wait_s == pytest.approx(max(a.duty_cycle_ms, 5.0) / 1000.0)
            wait_ms = slo.wait_beyond_cycle_ms(5.0, a.duty_cycle_ms)
            target = slo.batch_target_ms(60.0, a.duty_cycle_ms, a.busy_ms, wait_ms)
            assert policy.target_ms == pytest.approx(target)
            assert agent.executor(a.gpu).cycle_ms == pytest.approx(a.duty_cycle_ms)
    finally:
        agent.close()


CYCLE_END = [  # counterexamples the property found (150 examples, seed 2): one GPU, phase 0
    # m1 planned at exactly d + t = 6 + 2 ms; m0's lone 3 ms request ran across the cycle end
    ((9.0, 19.0, 2.0, 1.0, 1), (8.0, 169.0, 1.0, 0.5, 2)),
    # the same at a cycle with no slack; left to the next cycle, m0 must not jump m1's turn
    ((10.0, 26.0, 3.0, 0.5, 1), (9.0, 178.0, 2.0, 0.25, 2)),
]


@pytest.mark.parametrize("fleet", CYCLE_END)
def test_a_batch_at_the_cycles_end_does_not_delay_the_next_cycles_turns(
    fleet: tuple[tuple[float, float, float, float, int], ...],
) -> None:
    """m1 ran at its turn; its next request, queued just after, waits for the next cycle.
    m0's lone request (within m0's budget) arrived just before that cycle's end; run then, it
    ran across the end, m1's turn came late, its request was shed (attainment 0.9868, 3 of 304
    dropped, before the executor held such batches). m1's plan leaves its turn no room
    (``slo.turn_room_ms`` = 0), so the executor holds m0's off-turn batch for the next cycle,
    where it waits for its turn as the plan has it (EDF, not ahead as a batch that waited a
    cycle: else 0.9844, 5 dropped)."""
    models = [
        _spec(slo=slo_ms, qps=qps, replicas=1, base=base, per=per, max_batch=b, wait=0.0)
        for slo_ms, qps, base, per, b in fleet
    ]
    outcomes = _serve_the_plan(models, 1, 0.0)
    assert len(outcomes) == 2
    for a, spec, res, _ in outcomes:
        assert res.dropped == 0, a
        assert res.attainment >= 0.99, (a, res.attainment)
        assert max(res.latencies_ms) <= spec.slo.latency_ms, a
