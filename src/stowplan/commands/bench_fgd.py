"""``stowplan bench fgd``: the public GPU-sharing benchmark (Alibaba 2023 trace, FGD protocol).

Reads ``../shared/data/alibaba-gpu-v2023`` and ``../shared/data/fgd-simulator-results`` (or
``$STOWPLAN_DATA``), runs our policies with ``stowplan.fgdbench.tracesim`` and prints a
Markdown table of the GPU allocation ratio at 130 % arrived (mean over seeds) beside the six
published policies, plus two upper bounds (``stowplan.fgdbench.tracebound``) and, with
``--explain``, where the idle GPU capacity of the final state lies. Thin shell: file reading and
printing only.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

import click
from tqdm import tqdm

from stowplan import shareddata
from stowplan.fgdbench.tracebound import trace_bounds
from stowplan.fgdbench.tracecluster import Cluster, IdleBreakdown, arrivals
from stowplan.fgdbench.tracefiles import TraceFileError, load_nodes, load_pods, load_published
from stowplan.fgdbench.tracesim import Simulator

PUBLISHED = ("01-Random", "02-DotProd", "03-GpuClustering", "04-GpuPacking", "05-BestFit", "06-FGD")
DEFAULT_WORKLOADS = ("default", "gpushare100", "multigpu50", "gpuspec33")


def data_dir() -> Path:
    """The shared data folder (:mod:`stowplan.shareddata`)."""
    return shareddata.data_root()


@click.command(name="fgd")
@click.option(
    "--seeds",
    default=10,
    show_default=True,
    type=click.IntRange(1, 10),
    help="Seeds 42.. (the published runs use 10).",
)
@click.option(
    "--workloads",
    default=",".join(DEFAULT_WORKLOADS),
    show_default=True,
    help="Comma-separated workload names (openb_pod_list_NAME.csv).",
)
@click.option(
    "--defrag-moves",
    default=3,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Moves allowed per arrival in the defragmentation run (to make room for a pod "
    "that fits nowhere, or to fill the hole beside a just-placed large pod).",
)
@click.option(
    "--arrived",
    default=130,
    show_default=True,
    type=click.IntRange(1, 130),
    help="Arrived GPU request (% of capacity) at which allocation is reported.",
)
@click.option(
    "--policies",
    default="bestfit,stowplan,defrag",
    show_default=True,
    help="Comma-separated runs among bestfit, fgd (our FGD re-implementation), stowplan and "
    "defrag (stowplan with --defrag-moves moves per arrival).",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Also print where the idle GPU capacity of each run's final state lies.",
)
@click.option("--quick", is_flag=True, help="1 seed, default workload, no defrag (< 1 minute).")
def command(
    seeds: int,
    workloads: str,
    defrag_moves: int,
    arrived: int,
    policies: str,
    explain: bool,
    quick: bool,
) -> None:
    """GPU allocation ratio on the Alibaba GPU-sharing trace vs the six published policies.

    Two bounds are printed beside them: the offline upper bound (no placement of the arrived pods
    can allocate more: an LP over node classes) and the protocol bound (the same LP where the pods
    that fit at their arrival whatever the policy did before must be placed: no policy that
    places every arriving pod that fits, with or without moves, can exceed it).
    """
    root = data_dir()
    trace = root / "alibaba-gpu-v2023"
    wls = [w.strip() for w in workloads.split(",") if w.strip()]
    runs: list[tuple[str, int]] = []
    for name in (p.strip() for p in policies.split(",") if p.strip()):
        if name not in ("bestfit", "fgd", "stowplan", "defrag"):
            raise click.BadParameter(f"unknown policy {name!r}", param_hint="--policies")
        if name == "defrag":
            if defrag_moves and not quick:
                runs.append(("stowplan", defrag_moves))
        else:
            runs.append((name, 0))
    if not runs:
        raise click.BadParameter("no run selected", param_hint="--policies")
    if quick:
        seeds, wls = 1, ["default"]
    try:
        nodes = load_nodes(trace / "openb_node_list_gpu_node.csv")
        published = load_published(
            root / "fgd-simulator-results" / "analysis_allo_discrete.csv", str(arrived)
        )
        pods_by_wl = {wl: load_pods(trace / f"openb_pod_list_{wl}.csv") for wl in wls}
    except TraceFileError as exc:
        raise click.ClickException(str(exc)) from None
    capacity = Cluster(nodes).capacity_milli
    results: dict[tuple[str, str], list[float]] = defaultdict(list)
    bounds: dict[str, list[float]] = defaultdict(list)
    pbounds: dict[str, list[float]] = defaultdict(list)
    idle: dict[tuple[str, str], list[IdleBreakdown]] = defaultdict(list)
    secs: dict[tuple[str, str], list[float]] = defaultdict(list)
    moves: dict[tuple[str, str], list[int]] = defaultdict(list)
    jobs = [(wl, seed, run) for wl in wls for seed in range(42, 42 + seeds) for run in runs]
    for wl, seed, (policy, moves_k) in tqdm(jobs, desc="fgd", unit="run", leave=False):
        pods = pods_by_wl[wl]
        seq = arrivals(pods, capacity, seed)
        if (policy, moves_k) == runs[0]:
            offline, protocol = trace_bounds(nodes, seq, capacity, arrived)
            bounds[wl].append(offline.ratio_pct)
            pbounds[wl].append(protocol.ratio_pct)
        sim = Simulator(nodes, pods, policy, seed, defrag_moves=moves_k)
        res = sim.run(seq, wl, seed, time.monotonic)
        results[(wl, res.policy)].append(res.at(arrived))
        secs[(wl, res.policy)].append(res.seconds / max(1, len(seq)) * 1000)
        moves[(wl, res.policy)].append(res.moves)
        if res.idle is not None:
            idle[(wl, res.policy)].append(res.idle)
    names = [f"{p}+defrag{k}" if k else p for p, k in runs]
    click.echo(
        f"GPU allocation % at {arrived} % arrived, mean of {seeds} seed(s) (published: "
        "10 seeds, kubernetes-scheduler-simulator)\n"
    )
    head = [
        "workload",
        *[p.split("-", 1)[1] for p in PUBLISHED],
        *[f"ours {n}" for n in names],
        "protocol bound",
        "offline upper bound",
    ]
    click.echo("| " + " | ".join(head) + " |")
    click.echo("|" + "---|" * len(head))
    for wl in wls:
        cells = [wl, *[_fmt(published.get((wl, p))) for p in PUBLISHED]]
        cells += [_fmt(statistics.fmean(results[(wl, n)])) for n in names]
        cells.append(_fmt(statistics.fmean(pbounds[wl])))
        cells.append(_fmt(statistics.fmean(bounds[wl])))
        click.echo("| " + " | ".join(cells) + " |")
    click.echo("\nper-decision time (ms, mean) and defrag moves (total per run, mean):")
    for wl in wls:
        parts = [f"{n} {statistics.fmean(secs[(wl, n)]):.2f} ms" for n in names]
        parts += [f"{n} moves {statistics.fmean(moves[(wl, n)]):.0f}" for n in names if "+" in n]
        click.echo(f"- {wl}: " + ", ".join(parts))
    click.echo("\nper seed (42..): allocation % of each run, then the protocol bound:")
    for wl in wls:
        for n in names:
            click.echo(f"- {wl} {n}: " + " ".join(f"{v:.2f}" for v in results[(wl, n)]))
        click.echo(f"- {wl} protocol bound: " + " ".join(f"{v:.2f}" for v in pbounds[wl]))
    if explain:
        _print_idle(wls, names, idle, capacity)


def _print_idle(
    wls: list[str],
    names: list[str],
    idle: dict[tuple[str, str], list[IdleBreakdown]],
    capacity: int,
) -> None:
    """Mean idle GPUs of the final state (after the last arrival) by cause, per policy."""
    click.echo(
        "\nIdle GPUs in the final state (mean over seeds; GPUs = idle milli / 1000; % of "
        "capacity in brackets):\n"
    )
    head = [
        "workload",
        "policy",
        "GPUs with a >500-milli pod (count)",
        "idle beside it",
        "other partly used GPUs",
        "free GPUs, node CPU/memory-stranded",
        "free GPUs elsewhere",
        "total idle",
    ]
    click.echo("| " + " | ".join(head) + " |")
    click.echo("|" + "---|" * len(head))
    for wl in wls:
        for n in names:
            rows = idle.get((wl, n))
            if not rows:
                continue

            def cell(field: str, rows: list[IdleBreakdown] = rows) -> str:
                v = statistics.fmean(getattr(r, field) for r in rows)
                return f"{v / 1000:.1f} ({v * 100 / capacity:.2f} %)"

            fields = (
                "large_share_milli",
                "other_partial_milli",
                "stranded_free_milli",
                "free_milli",
            )
            total = statistics.fmean(sum(getattr(r, f) for f in fields) for r in rows)
            count = statistics.fmean(r.large_share_gpus for r in rows)
            click.echo(
                f"| {wl} | {n} | {count:.0f} | "
                + " | ".join(cell(f) for f in fields)
                + f" | {total / 1000:.1f} ({total * 100 / capacity:.2f} %) |"
            )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"
