"""Run the allocator lab over several traces and format the results (Markdown, JSON).

Callers: the ``stowplan memsim`` command and :mod:`stowplan.memlab.report`. Loads each trace once
(``.log``, ``.log.gz`` or compact ``.stwtrace.npz``), replays it through the requested
allocators and returns plain result objects; printing is the caller's job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stowplan.memlab.alloc_trace import ALLOC, FREE, Trace
from stowplan.memlab.allocators import ALLOCATORS, CACHING_BASELINES, allocator_class
from stowplan.memlab.allocators.stowplan import Profile
from stowplan.memlab.device import CostModel
from stowplan.memlab.errors import MemlabError
from stowplan.memlab.floors import GrowthBound, growth_bound
from stowplan.memlab.metrics import SimResult
from stowplan.memlab.parser import load_trace
from stowplan.memlab.residency import PolicyResult, ResidencyTrace, replay_policies, residency_ops
from stowplan.memlab.simulate import learn_profile, replay, replay_ops

MIB = 1 << 20
MIN_TIMED_EVENTS = 1000  # below this, events/s is timer noise


@dataclass(frozen=True)
class TraceRun:
    """One trace and the results of every allocator replayed on it."""

    path: str
    trace: Trace
    trace_allocator: str  # the allocator name whose records were replayed
    events: int
    allocations: int
    deallocations: int
    peak_live_bytes: int
    results: tuple[SimResult, ...]

    def result(self, allocator: str) -> SimResult | None:
        return next((r for r in self.results if r.allocator == allocator), None)

    def to_json(self) -> dict[str, object]:
        return {
            "trace": self.path,
            "events": self.events,
            "allocations": self.allocations,
            "deallocations": self.deallocations,
            "peak_live_bytes": self.peak_live_bytes,
            "trace_allocator": self.trace_allocator,
            "malformed_records": self.trace.stats.malformed_records,
            "results": [r.summary() for r in self.results],
        }


def resolve_allocators(name: str) -> list[str]:
    """``all`` or a comma-separated list of names (validated)."""
    if name == "all":
        return list(ALLOCATORS)
    names = [n.strip() for n in name.split(",") if n.strip()]
    for n in names:
        allocator_class(n)
    return names


def run_trace(
    path: str,
    allocators: Sequence[str],
    cost: CostModel | None = None,
    profile_from: Trace | None = None,
    progress: Callable[[str], None] | None = None,
    trace_allocator: str | None = None,
) -> TraceRun:
    """Load ``path`` and replay the records of one allocator name (default: the busiest one)."""
    trace = load_trace(path)
    if trace_allocator is not None and trace_allocator not in trace.allocator_names:
        known = ", ".join(trace.allocator_names) or "none"
        raise MemlabError(f"{path}: no allocator named {trace_allocator!r} (found: {known})")
    main = trace_allocator or trace.main_allocator()
    idx = trace.allocator_names.index(main) if main in trace.allocator_names else -1
    kinds, slots = trace.kinds, trace.slots
    mine = (slots >= 0) & (trace.slot_allocator[slots.clip(0)] == idx)
    n_alloc = int(((kinds == ALLOC) & mine).sum())
    n_free = int(((kinds == FREE) & mine).sum())
    profile: Profile | None = None
    if profile_from is not None:
        p_ops, p_sizes = profile_from.replay_ops()
        profile = learn_profile(p_ops, p_sizes)
    results = []
    for name in allocators:
        if progress:
            progress(f"{Path(path).name}: {name}")
        results.append(replay(trace, name, cost=cost, allocator_filter=main, profile=profile))
    return TraceRun(
        path=path,
        trace=trace,
        trace_allocator=main,
        events=n_alloc + n_free,
        allocations=n_alloc,
        deallocations=n_free,
        peak_live_bytes=trace.peak_live_bytes(main),
        results=tuple(results),
    )


#: the lab allocators a residency trace's blocks are replayed through (the warm planner needs
#: per-step tensors, which a residency trace does not have)
RESIDENCY_ALLOCATORS = ("naive", "bfc", "pytorch", "bestfit", "buddy", "stowplan")


@dataclass(frozen=True)
class ResidencyRun:
    """A residency trace: every placement policy on its requests in its fixed pool, and the
    recorded policy's block sequence through the lab's growing allocators."""

    path: str
    trace: ResidencyTrace
    peak_live_bytes: int
    policies: tuple[PolicyResult, ...]  # best first
    results: tuple[SimResult, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "trace": self.path,
            "pool_bytes": self.trace.pool_bytes,
            "recorded_policy": self.trace.policy,
            "requests": len(self.trace.requests),
            "blocks": sum(1 for e in self.trace.events if e[0] == "alloc"),
            "peak_live_bytes": self.peak_live_bytes,
            "policies": [p.summary() for p in self.policies],
            "results": [r.summary() for r in self.results],
        }


def run_residency(
    path: str,
    trace: ResidencyTrace,
    allocators: Sequence[str],
    cost: CostModel | None = None,
) -> ResidencyRun:
    """Replay one residency trace (see :class:`ResidencyRun`)."""
    policies = replay_policies(trace)
    ops, blocks, peak = residency_ops(trace.events)
    names = [n for n in allocators if n in RESIDENCY_ALLOCATORS]
    results = [replay_ops(n, ops, blocks, peak, cost=cost, repeats=1) for n in names]
    return ResidencyRun(path, trace, peak, tuple(policies), tuple(results))


def residency_markdown(run: ResidencyRun) -> str:
    """The residency tables: placement policies in the pool, then the growing allocators."""
    t = run.trace
    acquires = sum(1 for r in t.requests if r[0] == "acquire")
    models = len({r[1] for r in t.requests if r[0] == "register"})
    lines = [
        f"**{Path(run.path).name}** (residency): {models} models, {acquires:,} acquires in a "
        f"{t.pool_bytes / MIB:,.0f} MiB pool, recorded with `{t.policy}`; peak live "
        f"{run.peak_live_bytes / MIB:,.1f} MiB",
        "",
        "| placement in the pool | offloads | prefetches | prefetched MiB | relocations "
        "| relocated MiB | refused | replays the agent's offsets |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def key(p: PolicyResult) -> tuple[int, int, int]:
        return (p.prefetched_bytes, p.refused, p.relocated_bytes)

    for p in run.policies:
        same = "-" if p.same_as_recorded is None else ("yes" if p.same_as_recorded else "**no**")
        best = " (best)" if key(p) == key(run.policies[0]) else ""
        lines.append(
            f"| {p.policy}{best} | {p.offloads:,} | {p.prefetches:,} "
            f"| {p.prefetched_bytes / MIB:,.1f} | {p.relocations:,} "
            f"| {p.relocated_bytes / MIB:,.1f} | {p.refused:,} | {same} |"
        )
    peak = max(run.peak_live_bytes, 1)
    lines += [
        "",
        "| the same blocks, growing allocator | peak reserved MiB | x peak live | cudaMalloc "
        "| cudaFree |",
        "|---|---:|---:|---:|---:|",
        f"| agent pool (reserved once) | {t.pool_bytes / MIB:,.1f} | {t.pool_bytes / peak:.3f} "
        "| 1 | 0 |",
    ]
    for r in run.results:
        lines.append(
            f"| {r.allocator} | {r.peak_reserved_bytes / MIB:,.1f} "
            f"| {r.peak_reserved_bytes / peak:.3f} | {r.device_malloc_calls:,} "
            f"| {r.device_free_calls:,} |"
        )
    return "\n".join(lines)


def best_caching_baseline(run: TraceRun) -> SimResult | None:
    cands = [r for r in run.results if r.allocator in CACHING_BASELINES]
    return min(cands, key=lambda r: r.excess_bytes) if cands else None


def markdown_table(run: TraceRun) -> str:
    """The per-trace table the README quotes."""
    lines = [
        f"**{Path(run.path).name}**: {run.events:,} events, peak live "
        f"{run.peak_live_bytes / MIB:,.2f} MiB (lower bound)",
        "",
        "| allocator | peak reserved MiB | x lower bound | excess MiB | fragmentation "
        "| cudaMalloc | cudaFree | sim. overhead ms | step repeat | events/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run.results:
        rep = "-" if r.step_repeat_rate is None else f"{r.step_repeat_rate:.2f}"
        lines.append(
            f"| {r.allocator} | {r.peak_reserved_bytes / MIB:,.2f} | {r.overhead_ratio:.3f} "
            f"| {r.excess_bytes / MIB:,.2f} | {r.fragmentation:.3f} | {r.device_malloc_calls:,} "
            f"| {r.device_free_calls:,} | {r.simulated_overhead_us / 1000:,.2f} | {rep} "
            f"| {r.events_per_second:,.0f} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class TargetCheck:
    trace: str
    allocator: str
    within_5pct: bool
    reserved_vs_best: bool  # peak reserved <= the best caching baseline's (issue 15, cold)
    excess_vs_best: bool
    calls_vs_pytorch: bool
    overhead_vs_pytorch: bool
    speed_ok: bool | None  # None: trace too small to time meaningfully
    detail: str


def check_targets(run: TraceRun, allocator: str) -> TargetCheck | None:
    """The issue's targets for ``allocator`` on one trace (None if a needed row is missing)."""
    me = run.result(allocator)
    pt = run.result("pytorch")
    best = best_caching_baseline(run)
    if me is None or pt is None or best is None:
        return None
    slowest = min(r.events_per_second for r in run.results)
    return TargetCheck(
        trace=Path(run.path).name,
        allocator=allocator,
        within_5pct=me.peak_reserved_bytes <= 1.05 * run.peak_live_bytes,
        reserved_vs_best=me.peak_reserved_bytes <= best.peak_reserved_bytes,
        excess_vs_best=3 * me.excess_bytes <= best.excess_bytes,
        calls_vs_pytorch=(me.device_malloc_calls + me.device_free_calls)
        <= (pt.device_malloc_calls + pt.device_free_calls),
        overhead_vs_pytorch=me.simulated_overhead_us <= pt.simulated_overhead_us,
        speed_ok=None if run.events < MIN_TIMED_EVENTS else slowest >= 500_000,
        detail=(
            f"excess {me.excess_bytes / MIB:.2f} MiB vs best caching baseline "
            f"{best.allocator} {best.excess_bytes / MIB:.2f} MiB"
        ),
    )


def targets_table(runs: Sequence[TraceRun], allocators: Sequence[str]) -> str:
    def mark(ok: bool | None) -> str:
        if ok is None:
            return "n/a (tiny trace)"
        return "yes" if ok else "**no**"

    lines = [
        "| trace | allocator | reserved <= 1.05 x live | reserved <= best baseline "
        "| excess <= 1/3 best baseline | calls <= pytorch | overhead <= pytorch "
        "| all allocators >= 500k ev/s | detail |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for name in allocators:
            c = check_targets(run, name)
            if c is None:
                continue
            lines.append(
                f"| {c.trace} | {c.allocator} | {mark(c.within_5pct)} "
                f"| {mark(c.reserved_vs_best)} | {mark(c.excess_vs_best)} "
                f"| {mark(c.calls_vs_pytorch)} | {mark(c.overhead_vs_pytorch)} "
                f"| {mark(c.speed_ok)} | {c.detail} |"
            )
    return "\n".join(lines)


def growth_bound_of(run: TraceRun) -> GrowthBound | None:
    """The online growth bound (:func:`stowplan.memlab.floors.growth_bound`) of one trace,
    from its caching baselines' replays (None unless all of them and PyTorch were run)."""
    base = [run.result(name) for name in CACHING_BASELINES]
    pt = run.result("pytorch")
    if pt is None or any(r is None for r in base):
        return None
    ops, sizes = run.trace.replay_ops(run.trace_allocator)
    timelines = [(r.timeline[1:-1], r.peak_reserved_bytes) for r in base if r is not None]
    return growth_bound(ops, sizes, timelines, pt.device_malloc_calls + pt.device_free_calls)


def growth_table(runs: Sequence[TraceRun]) -> str:
    """Per trace: the cold stowplan row against what any online growth policy can reach."""
    lines = [
        "| trace | best baseline MiB | pytorch calls | stowplan MiB / calls "
        "| one-range high water MiB / calls mapping exactly "
        "| fewest calls never above best baseline | fewest calls, best baseline at step ends |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        b = growth_bound_of(run)
        me = run.result("stowplan")
        if b is None or me is None:
            continue
        calls = me.device_malloc_calls + me.device_free_calls
        lines.append(
            f"| {Path(run.path).name} | {b.best_baseline_bytes / MIB:,.0f} | {b.pytorch_calls} "
            f"| {me.peak_reserved_bytes / MIB:,.0f} / {calls} "
            f"| {b.high_water_bytes / MIB:,.0f} / {b.exact_calls} "
            f"| {b.calls_never_above_best} | {b.calls_at_step_ends} |"
        )
    return "\n".join(lines)
