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

import asyncio
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stowplan import placement
from stowplan.agent.batching import AimdController, BatchPolicy, derive_target_ms
from stowplan.agentbench.data import DeviceFit, FitQuery, load_fit
from stowplan.agentbench.simulate import SimModel, SimResult, poisson_arrivals, simulate

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
            target = derive_target_ms(slo, cycle, busy, max_wait_ms=1.0)

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


# -- real sessions on this machine's CPU ---------------------------------------------------

REAL_MIX = (("convnet", 10.0, 300.0), ("mlp-wide", 25.0, 300.0))  # (example, SLO ms, req/s)


@dataclass(frozen=True)
class RealRow:
    mode: str
    model: str
    slo_ms: float
    rate: float
    sent: int
    within_slo: int
    dropped: int
    p99_ms: float
    mean_batch: float


def run_real(
    duration_s: float = 10.0,
    scale: float = 1.0,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> list[RealRow]:
    """Two real ONNX models on the CPU, driven in-process (no HTTP) by open-loop Poisson load:
    one device executor interleaving both (time-sliced, EDF) vs one executor per model
    (unsynchronised threads whose ONNX Runtime calls contend for the same cores)."""
    # the real agent and ONNX Runtime load only for the real mode (the simulated one needs neither)
    from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig
    from stowplan.agent.errors import AgentError
    from stowplan.agent.protocol import InferenceRequest
    from stowplan.agent.serving import Agent
    from stowplan.agent.telemetry import SimulatedTelemetry
    from stowplan.models import build_example

    rows: list[RealRow] = []
    with tempfile.TemporaryDirectory(prefix="stowplan-timeslice-") as tmp:
        paths = {name: build_example(name, Path(tmp)) for name, _, _ in REAL_MIX}
        for mode in ("time-sliced", "threads"):
            devices = 1 if mode == "time-sliced" else len(REAL_MIX)
            agent = Agent(
                AgentSettings(cache_dir=Path(tmp), memory_pool_fraction=0),
                SimulatedTelemetry(devices),
            )
            reqs: dict[str, InferenceRequest] = {}
            for i, (name, slo, _) in enumerate(REAL_MIX):
                served = agent.load(
                    ModelConfig(
                        name=name,
                        uri=str(paths[name]),
                        slo_ms=slo,
                        max_batch=32,
                        device=0 if devices == 1 else i,
                        batching=BatchingConfig(max_queue_delay_ms=1.0),
                    )
                )
                assert served.runtime is not None, served.reason
                spec = served.runtime.inputs[0]
                shape = [1, *spec.shape[1:]]
                reqs[name] = InferenceRequest.model_validate(
                    {
                        "inputs": [
                            {
                                "name": spec.name,
                                "shape": shape,
                                "datatype": "FP32",
                                "data": np.zeros(int(np.prod(shape)), np.float32).tolist(),
                            }
                        ]
                    }
                )

            async def drive(
                agent: Agent = agent,
                reqs: dict[str, InferenceRequest] = reqs,
            ) -> dict[str, list[float | None]]:
                rng = np.random.default_rng(seed)
                out: dict[str, list[float | None]] = {n: [] for n, _, _ in REAL_MIX}
                loop = asyncio.get_running_loop()

                async def one(name: str) -> None:
                    t0 = loop.time()
                    try:
                        await agent.infer(name, reqs[name])
                        out[name].append((loop.time() - t0) * 1000.0)
                    except AgentError:
                        out[name].append(None)

                events = sorted(
                    (float(t), name)
                    for name, _, rate in REAL_MIX
                    for t in np.cumsum(
                        rng.exponential(1 / (rate * scale), int(rate * scale * duration_s * 1.3))
                    )
                    if t < duration_s
                )
                start = loop.time()
                tasks = []
                for t, name in events:
                    delay = start + t - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(one(name)))
                await asyncio.gather(*tasks)
                return out

            asyncio.run(drive())  # warm-up pass (ORT allocations, AIMD caps settle)
            results = asyncio.run(drive())
            stats = {r.name: r for r in agent.model_reports()}
            agent.close()
            for name, slo, rate in REAL_MIX:
                lats = results[name]
                ok = [x for x in lats if x is not None]
                rows.append(
                    RealRow(
                        mode,
                        name,
                        slo,
                        rate * scale,
                        len(lats),
                        sum(1 for x in ok if x <= slo),
                        len(lats) - len(ok),
                        float(np.percentile(ok, 99)) if ok else float("nan"),
                        float(stats[name].mean_batch or 0.0),
                    )
                )
            if progress:
                progress()
    return rows


def real_table(rows: list[RealRow]) -> str:
    out = [
        "| mode | model | SLO ms | offered req/s | within SLO | dropped | p99 ms | mean batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.mode} | {r.model} | {r.slo_ms:g} | {r.rate:.0f} "
            f"| {r.within_slo / max(r.sent, 1) * 100:.1f}% | {r.dropped} | {r.p99_ms:.1f} "
            f"| {r.mean_batch:.1f} |"
        )
    load1, load5, _ = os.getloadavg()
    out.append("")
    out.append(
        f"Machine: {os.cpu_count()} cores, load average {load1:.1f} / {load5:.1f} "
        "(1 / 5 min) at the end of the run."
    )
    return "\n".join(out)
