"""Benchmark: time-sliced executor vs unsynchronised per-model threads (``stowplan bench
timeslice``).

2 to 4 models with different SLOs share one simulated A100 whose batch times follow published
fits. Their loads are set so that :mod:`stowplan.placement` puts them all on that one GPU (the
largest common load factor that fits, times ``load``), and placement's duty cycle and per-model
busy times become the executor's budgets. Each mix runs three ways through the agent's own
batching code: the time-sliced executor (EDF with budgets, one batch at a time), and per-model
threads that dispatch whenever their own queue is ready, sharing the device with an interference
penalty (default 10 % per extra concurrent batch) and without one (ideal processor sharing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stowplan import placement
from stowplan.agent.batching import AimdController, BatchPolicy, derive_target_ms
from stowplan.agent.simulate import SimModel, SimResult, poisson_arrivals, simulate
from stowplan.agentbench.data import DeviceFit, FitQuery, load_fit

A100 = "A100-80GB"
TRITON = "PyTorch/LanguageModeling/BERT/triton"
MIX = (
    (
        FitQuery(
            "ResNet-50",
            "PyTorch/Classification/ConvNets/triton/resnet50/README.md",
            4,
            A100,
            "FP16",
        ),
        20.0,
        128,
    ),
    (FitQuery("BERT-Large", f"{TRITON}/large/README.md", 20, A100, "FP16"), 100.0, 16),
    (FitQuery("BERT-dist4l", f"{TRITON}/dist4l/README.md", 18, A100, "FP16"), 15.0, 16),
    (FitQuery("BERT-dist6l", f"{TRITON}/dist6l/README.md", 18, A100, "FP16"), 30.0, 16),
)
BASE_QPS = (1000.0, 100.0, 1000.0, 300.0)


@dataclass(frozen=True)
class MixRow:
    mix: int
    model: str
    slo_ms: float
    qps: float
    busy_ms: float
    cycle_ms: float
    sliced: SimResult
    threads: SimResult
    threads_ideal: SimResult


def _problem(fits: list[tuple[DeviceFit, float, int]], factor: float) -> placement.Problem:
    gpu = placement.Gpu(node="bench", index=0, memory_mib=81920, gpu_type=A100)
    models = tuple(
        placement.ModelDemand(
            name=fit.label,
            replicas=1,
            slo_ms=slo,
            target_qps=qps * factor,
            latency=placement.LatencyProfile(base_ms=fit.base_ms, per_item_ms=fit.per_item_ms),
            memory=placement.MemoryProfile(weights_mib=500, per_item_mib=10),
            max_batch=mb,
        )
        for (fit, slo, mb), qps in zip(fits, BASE_QPS, strict=False)
    )
    return placement.Problem(gpus=(gpu,), models=models)


def largest_factor(fits: list[tuple[DeviceFit, float, int]]) -> tuple[float, placement.Plan]:
    """Bisection on a common load factor: the largest where placement fits all on one GPU."""
    lo, hi = 0.0, 16.0
    best = placement.plan(_problem(fits, 1e-3))
    for _ in range(30):
        mid = (lo + hi) / 2
        p = placement.plan(_problem(fits, mid))
        if p.unplaced:
            hi = mid
        else:
            lo, best = mid, p
    return lo, best


def run(
    n_models: tuple[int, ...] = (2, 3, 4),
    load: float = 0.8,
    duration_s: float = 20.0,
    interference: float = 0.1,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> list[MixRow]:
    rows: list[MixRow] = []
    for n in n_models:
        fits = [(load_fit(q), slo, mb) for q, slo, mb in MIX[:n]]
        factor, _ = largest_factor(fits)
        if factor <= 0:
            raise ValueError(f"placement cannot fit the first {n} models on one GPU at any load")
        the_plan = placement.plan(_problem(fits, factor * load))
        by_model = {a.model: a for a in the_plan.assignments}
        cycle = max((a.duty_cycle_ms for a in the_plan.assignments), default=0.0)
        sims = []
        for i, (fit, slo, mb) in enumerate(fits):
            a = by_model.get(fit.label)
            busy = a.busy_ms if a else 0.0
            qps = BASE_QPS[i] * factor * load
            target = derive_target_ms(slo, cycle, busy)

            def make(mb: int = mb, target: float = target) -> BatchPolicy:
                return AimdController(mb, target, max_wait_s=0.001)

            sims.append(
                SimModel(
                    fit.label,
                    fit.base_ms,
                    fit.per_item_ms,
                    slo,
                    poisson_arrivals(qps, duration_s, seed + i),
                    make,
                    busy,
                )
            )
        sliced = simulate(sims, "sliced", cycle_ms=cycle, seed=seed)
        threads = simulate(sims, "threads", interference=interference, seed=seed)
        ideal = simulate(sims, "threads", interference=0.0, seed=seed)
        for s in sims:
            a = by_model.get(s.name)
            rows.append(
                MixRow(
                    n,
                    s.name,
                    s.slo_ms,
                    len(s.arrivals_s) / duration_s,
                    a.busy_ms if a else 0.0,
                    cycle,
                    sliced[s.name],
                    threads[s.name],
                    ideal[s.name],
                )
            )
        if progress:
            progress()
    return rows


def table(rows: list[MixRow], interference: float = 0.1) -> str:
    out = [
        "| models on one GPU | model | SLO ms | offered req/s | placement busy / cycle ms "
        f"| attainment time-sliced | attainment threads (+{interference * 100:.0f}%/batch) "
        "| attainment threads (ideal sharing) | p99 ms sliced / threads / ideal |",
        "|---:|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.mix} | {r.model} | {r.slo_ms:g} | {r.qps:.0f} | {r.busy_ms:.1f} / "
            f"{r.cycle_ms:.0f} | {r.sliced.attainment * 100:.2f}% "
            f"| {r.threads.attainment * 100:.2f}% | {r.threads_ideal.attainment * 100:.2f}% "
            f"| {r.sliced.p99_ms:.1f} / {r.threads.p99_ms:.1f} / {r.threads_ideal.p99_ms:.1f} |"
        )
    return "\n".join(out)
