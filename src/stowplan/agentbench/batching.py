"""Benchmark: batching policy vs load on a simulated device (``stowplan bench batching``).

For each device fit (published latency-vs-batch lines) and each workload (Poisson at a fraction
of the device's SLO-bounded capacity, and the bursty Azure LLM traces compressed to a mean rate),
it simulates no batching, every static batch size on a sweep (reporting the best), a
Triton-style batcher (largest batch up to maxBatch after a fixed max queue delay) and AIMD with
default knobs, all through the agent's own batching code (:mod:`stowplan.agentbench.simulate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from stowplan.agent.batching import AimdController, BatchPolicy, FixedPolicy, derive_target_ms
from stowplan.agentbench.data import DEFAULT_FITS, DeviceFit, load_fit, scale_trace, trace_arrivals
from stowplan.agentbench.simulate import SimModel, SimResult, max_goodput_per_s, poisson_arrivals
from stowplan.agentbench.simulate import simulate as run_sim


@dataclass(frozen=True)
class Setup:
    fit: DeviceFit
    slo_ms: float
    max_batch: int


SLOS = {0: (100.0, 64), 1: (20.0, 128), 2: (50.0, 16)}  # per DEFAULT_FITS entry: SLO, max batch


@dataclass(frozen=True)
class Row:
    device: str
    workload: str
    offered_qps: float
    capacity_qps: float
    none: SimResult
    best_static_b: int
    static: SimResult
    triton: SimResult
    aimd: SimResult

    @property
    def feasible(self) -> bool:
        """Some policy reaches 99 % SLO attainment (else the load itself is infeasible)."""
        return max(r.attainment for r in (self.none, self.static, self.triton, self.aimd)) >= 0.99


def static_sizes(max_batch: int) -> list[int]:
    sizes = [b for b in range(1, min(max_batch, 16) + 1)]
    b = 16
    while b < max_batch:
        b = min(max_batch, int(b * 1.25) + 1)
        sizes.append(b)
    return sizes


def workloads(
    capacity: float, duration_s: float, seed: int, quick: bool
) -> Iterator[tuple[str, list[float]]]:
    for frac in (0.5, 0.8, 1.5):
        yield f"Poisson {int(frac * 100)}%", poisson_arrivals(capacity * frac, duration_s, seed)
    traces = (("azure-conv", 0.7),) if quick else (("azure-conv", 0.7), ("azure-code", 0.3))
    for name, frac in traces:
        arr = trace_arrivals(name)
        yield f"{name} {int(frac * 100)}%", scale_trace(arr, capacity * frac, duration_s)


def fixed(cap: int, wait_s: float) -> Callable[[], BatchPolicy]:
    return lambda: FixedPolicy(cap, wait_s)


def aimd_policy(max_batch: int, slo_ms: float, wait_s: float) -> Callable[[], BatchPolicy]:
    """AIMD with default knobs: step 1, x0.9, target derived from the SLO and the bounded wait
    (as :func:`stowplan.agent.batching.make_policy` does for a served model)."""
    target = derive_target_ms(slo_ms, max_wait_ms=wait_s * 1000.0)
    return lambda: AimdController(max_batch, target, max_wait_s=wait_s)


def run(
    duration_s: float = 20.0,
    max_queue_delay_ms: float | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: Callable[[], None] | None = None,
) -> list[Row]:
    rows = []
    fits = [(q, SLOS[i]) for i, q in enumerate(DEFAULT_FITS)]
    if quick:
        fits = fits[:1]
    for q, (slo, max_batch) in fits:
        fit = load_fit(q)
        capacity = max_goodput_per_s(fit.base_ms, fit.per_item_ms, slo, max_batch)
        wait_s = max_queue_delay_ms if max_queue_delay_ms is not None else min(5.0, slo / 10)
        wait_s /= 1000.0

        def sim(
            arr: list[float],
            make: Callable[[], BatchPolicy],
            fit: DeviceFit = fit,
            slo: float = slo,
        ) -> SimResult:
            m = SimModel("m", fit.base_ms, fit.per_item_ms, slo, arr, make)
            return run_sim([m], seed=seed)["m"]

        for label, arr in workloads(capacity, duration_s, seed, quick):
            none = sim(arr, fixed(1, 0.0))
            sweep = {b: sim(arr, fixed(b, wait_s)) for b in static_sizes(max_batch)}
            best_b = max(sweep, key=lambda b: (sweep[b].goodput, -b))
            triton = sim(arr, fixed(max_batch, wait_s))
            aimd = sim(arr, aimd_policy(max_batch, slo, wait_s))
            rows.append(
                Row(
                    f"{fit.label}, SLO {slo:g} ms",
                    label,
                    len(arr) / duration_s,
                    capacity,
                    none,
                    best_b,
                    sweep[best_b],
                    triton,
                    aimd,
                )
            )
            if progress:
                progress()
    return rows


def table(rows: list[Row]) -> str:
    out = [
        "| device (fit), SLO | workload | offered req/s | goodput none | best static (b) "
        "| goodput Triton-style | goodput AIMD | AIMD / best static | SLO attainment "
        "none / static / Triton / AIMD | AIMD p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        ratio = r.aimd.goodput / r.static.goodput if r.static.goodput else float("nan")
        att = " / ".join(f"{x.attainment * 100:.1f}%" for x in (r.none, r.static, r.triton, r.aimd))
        flag = "" if r.feasible else " (infeasible load)"
        out.append(
            f"| {r.device} | {r.workload}{flag} | {r.offered_qps:.0f} | {r.none.goodput:.0f} "
            f"| {r.static.goodput:.0f} (b={r.best_static_b}) | {r.triton.goodput:.0f} "
            f"| {r.aimd.goodput:.0f} | {ratio:.3f} | {att} | {r.aimd.p99_ms:.1f} |"
        )
    return "\n".join(out)


def summary(rows: list[Row]) -> str:
    worst = min(rows, key=lambda r: r.aimd.goodput / max(r.static.goodput, 1e-9))
    ratio = worst.aimd.goodput / max(worst.static.goodput, 1e-9)
    feasible = [r for r in rows if r.feasible]
    below = [r for r in feasible if r.aimd.attainment < 0.99]
    speedups = [r.aimd.goodput / r.none.goodput for r in rows if r.none.goodput > 0]
    lines = [
        f"AIMD vs best static goodput: worst ratio {ratio:.3f} ({worst.device}, "
        f"{worst.workload}); target >= 0.95.",
        f"AIMD attainment >= 99% on {len(feasible) - len(below)}/{len(feasible)} feasible "
        "workloads"
        + (
            ": misses "
            + ", ".join(f"{r.device} {r.workload} {r.aimd.attainment * 100:.1f}%" for r in below)
            if below
            else "."
        ),
    ]
    if speedups:
        lines.append(
            f"AIMD goodput over no batching: {min(speedups):.1f}x to {max(speedups):.1f}x."
        )
    return "\n".join(lines)
