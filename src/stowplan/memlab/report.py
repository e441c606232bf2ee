"""The Markdown report of a ``memsim`` run, with PNG plots (matplotlib, Agg backend).

Writes ``DIR/README.md`` plus ``memory_<trace>.png`` (reserved bytes over the trace per allocator,
with the live requested bytes), ``comparison.png`` (peak reserved / lower bound per allocator and
trace) and ``tradeoff.png`` (space vs simulated time, one point per allocator and trace). A
person can read it without running anything. Callers: the ``memsim`` command. Must not replay
anything except the two reference floors of :mod:`stowplan.memlab.floors`.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from stowplan.memlab.allocators import CACHING_BASELINES
from stowplan.memlab.device import CostModel
from stowplan.memlab.floors import offline_floor, online_high_water
from stowplan.memlab.runner import (
    MIB,
    ResidencyRun,
    TraceRun,
    growth_table,
    markdown_table,
    residency_markdown,
    targets_table,
)

DPI = 72
COLORS = {
    "naive": "#555555",
    "bfc": "#d62728",
    "pytorch": "#ff7f0e",
    "bestfit": "#9467bd",
    "buddy": "#8c564b",
    "stowplan": "#1f77b4",
    "stowplan-warm": "#2ca02c",
}
MIN_PLOT_BYTES = 1 << 20  # traces smaller than this (format samples) stay out of the charts


def _stem(run: TraceRun) -> str:
    return (
        Path(run.path).name.removesuffix(".gz").removesuffix(".log").removesuffix(".stwtrace.npz")
    )


def _memory_plot(run: TraceRun, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=DPI)
    live = run.trace.live_curve(run.trace_allocator)
    step = max(1, len(live) // 2000)
    ax.plot(
        range(0, len(live), step),
        live[::step] / MIB,
        color="black",
        lw=1.2,
        label="live requested (lower bound)",
    )
    for r in run.results:
        xs: list[int] = []
        ys: list[float] = []
        for x, y in r.timeline:
            if ys:
                xs.append(x)
                ys.append(ys[-1])
            xs.append(x)
            ys.append(y / MIB)
        ax.plot(xs, ys, lw=1.0, color=COLORS.get(r.allocator), label=r.allocator, alpha=0.85)
    for name, idx in run.trace.phases:
        if name.startswith("step"):
            ax.axvline(_phase_op_index(run, idx), color="#bbbbbb", lw=0.6, ls=":")
    ax.set_xlabel("replayed event (dotted: step markers)")
    ax.set_ylabel("MiB")
    ax.set_title(f"{_stem(run)}: reserved device memory over the trace", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _phase_op_index(run: TraceRun, event_index: int) -> int:
    """Map a raw trace event index to the index in the replayed op list (approximate)."""
    kinds = run.trace.kinds[:event_index]
    return int(((kinds == 0) | (kinds == 1) | (kinds == 4)).sum())


def _comparison_plot(runs: Sequence[TraceRun], out: Path) -> None:
    names = [r.allocator for r in runs[0].results]
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=DPI)
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        ys = []
        for run in runs:
            res = run.result(name)
            ys.append(res.overhead_ratio if res else 0.0)
        xs = [i + k * width for i in range(len(runs))]
        ax.bar(xs, ys, width=width, color=COLORS.get(name), label=name)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(1.05, color="black", lw=0.6, ls="--")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(runs))])
    ax.set_xticklabels([_stem(r) for r in runs], fontsize=8)
    ax.set_ylabel("peak reserved / peak live")
    ax.set_title("Space: peak reserved relative to the lower bound (dashed: +5 %)", fontsize=10)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _tradeoff_plot(runs: Sequence[TraceRun], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=DPI)
    markers = "osD^vP*X"
    for m, run in enumerate(runs):
        for r in run.results:
            ax.scatter(
                r.simulated_overhead_us / 1000,
                r.overhead_ratio,
                color=COLORS.get(r.allocator),
                marker=markers[m % len(markers)],
                s=30,
                label=r.allocator if m == 0 else None,
            )
    ax.set_xscale("log")
    ax.set_xlabel("simulated allocator time, ms (log)")
    ax.set_ylabel("peak reserved / peak live")
    ax.set_title(
        "Time vs space (marker = trace: "
        + ", ".join(f"{markers[i % len(markers)]} {_stem(r)}" for i, r in enumerate(runs))
        + ")",
        fontsize=8,
    )
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_report(
    runs: Sequence[TraceRun],
    out_dir: Path,
    cost: CostModel,
    command_line: str = "",
    residency: Sequence[ResidencyRun] = (),
) -> Path:
    """Write the report into ``out_dir``; returns the path of the Markdown file. Residency
    traces (``residency``) get their own section after the per-trace results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plotted = [r for r in runs if r.peak_live_bytes >= MIN_PLOT_BYTES]
    md: list[str] = ["# Allocator lab report", ""]
    md += [
        "Generated by `" + (command_line or "stowplan memsim ...") + "` on "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()} "
        "(events/s are best of 3 replays on a shared 2-core machine; noisy).",
        "",
        "Each trace's tensor allocations (allocator "
        + ", ".join(sorted({f"`{r.trace_allocator}`" for r in runs}))
        + ") are replayed in file order through "
        "each allocator on a simulated device. Lower bound = peak live requested bytes. "
        "`stowplan` is cold (first run of a model, learns steps inside the trace); "
        "`stowplan-warm` starts from the profile a cold run learned on an earlier run of the "
        "same workload (a reload, restart or another replica of the model).",
        "",
        "## Cost model",
        "",
        "| parameter | value |",
        "|---|---:|",
    ]
    md += [f"| {k} | {v} |" for k, v in cost.model_dump().items()]
    md += ["", "## Results per trace", ""]
    for run in runs:
        md += [markdown_table(run), ""]
        stem = _stem(run)
        if run.peak_live_bytes >= MIN_PLOT_BYTES:
            png = f"memory_{stem}.png"
            _memory_plot(run, out_dir / png)
            md += [f"![reserved memory over {stem}]({png})", ""]
    if residency:
        md += ["## Residency traces (the agent's load/offload/prefetch sequence)", ""]
        for pool in residency:
            md += [residency_markdown(pool), ""]
    stow = [n for n in ("stowplan", "stowplan-warm") if runs and runs[0].result(n)]
    if stow and runs and runs[0].result("pytorch"):
        md += ["## Targets (issues 5 and 15)", "", targets_table(runs, stow), ""]
    if runs and "stowplan" in stow and all(runs[0].result(n) for n in CACHING_BASELINES):
        md += [
            "## Cold growth vs what any online growth policy can reach",
            "",
            "For the one-range best-fit placement (the online floor below): its high water and "
            "the calls of mapping exactly what each block needs, and the fewest device "
            "allocations of any growth policy that never holds more than the best caching "
            "baseline holds at the same moment, or only at each step boundary "
            "(`stowplan.memlab.floors.growth_bound`; greedy, so both are lower bounds). Where the "
            "never-above column exceeds PyTorch's calls, no policy that is within the best "
            "baseline at every moment can meet both cold targets: cold `stowplan` meets them by "
            "mapping ahead of the best baseline mid-run and ending within it. The step-ends "
            "column is what a policy that knew each step's final size in advance could reach.",
            "",
            growth_table(runs),
            "",
        ]
    md += [
        "## Reference floors",
        "",
        "Not allocators: the offline floor knows every lifetime in advance (greedy by size over "
        "the whole trace); the online high-water mark is best fit with coalescing in one "
        "contiguous arena that grows for free, i.e. the best any online best-fit allocator can "
        "do without lifetime knowledge, whatever its segment policy.",
        "",
        "| trace | lower bound MiB | offline floor MiB (x) | online best-fit high water MiB (x) |",
        "|---|---:|---:|---:|",
    ]
    for run in runs:
        ops, sizes = run.trace.replay_ops(run.trace_allocator)
        off = offline_floor(ops, sizes)
        onl = online_high_water(ops, sizes)
        lb = max(1, run.peak_live_bytes)
        md.append(
            f"| {Path(run.path).name} | {lb / MIB:,.2f} | {off / MIB:,.2f} ({off / lb:.3f}) "
            f"| {onl / MIB:,.2f} ({onl / lb:.3f}) |"
        )
    if plotted:
        _comparison_plot(plotted, out_dir / "comparison.png")
        _tradeoff_plot(plotted, out_dir / "tradeoff.png")
        md += [
            "",
            "## Comparison",
            "",
            "![peak reserved / lower bound](comparison.png)",
            "",
            "Where each allocator sits between space (y) and time (x): naive is the space lower "
            "bound at the highest time cost; caching allocators trade space for time.",
            "",
            "![time vs space trade-off](tradeoff.png)",
        ]
    md += [
        "",
        "## Parse summary",
        "",
        "| trace | alloc records | without buffer | dealloc (matched / no alloc record) "
        "| output records | malformed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        s = run.trace.stats
        md.append(
            f"| {Path(run.path).name} | {s.alloc_records:,} | {s.alloc_records_without_buffer:,} "
            f"| {s.dealloc_records:,} ({s.dealloc_matched:,} / {s.dealloc_unmatched:,}) "
            f"| {s.output_records:,} | {s.malformed_records} |"
        )
    path = out_dir / "README.md"
    path.write_text("\n".join(md) + "\n")
    return path
