"""``stowplan bench placement``: SLO-aware packing on instances built from real latency fits.

Reads ``gpu-inference-latency/latency_vs_batch_linear_fits.csv`` (under ``../shared/data`` or
``$STOWPLAN_DATA``), builds instances with ``fgdbench.synth`` and prints a Markdown table:
GPUs used by best-fit and by the engine with a time budget, the lower bound, solve times, and
time and memory per 1,000 replicas. ``--bestfit-only`` prints the best-fit speed table instead
(``plan(problem)`` with no budget, what the operator runs on every pass): min and median
seconds over ``--repeat`` runs, ms per 1,000 replicas and the peak Python heap of a separate,
traced run, and the first call in this process (for the first size: numba import and kernel
compile or cache load). Thin shell: reading, timing and printing only.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from pathlib import Path

import click
from tqdm import tqdm

from stowplan import latencyfits, placement, shareddata
from stowplan.commands.bench_fgd import data_dir
from stowplan.fgdbench import tracefiles
from stowplan.fgdbench.synth import LatencyFit, synthetic_problem, usable_fits
from stowplan.placement.bestfit import kernel_status
from stowplan.placement.colgen_kernel import warm_up
from stowplan.placement.planner import tight_lower_bound

DEFAULT_SIZES = "50,200,1000,3000,10000"
BESTFIT_SIZES = "1000,3000,10000"


def load_fits(path: Path) -> list[LatencyFit]:
    """The published fits (:func:`stowplan.fgdbench.tracefiles.load_fits`), errors as CLI errors."""
    try:
        return tracefiles.load_fits(path)
    except (shareddata.DataMissing, latencyfits.FitsFileError) as exc:
        raise click.ClickException(f"{exc} (set {shareddata.ENV_VAR}?)") from None


def _budget(replicas: int) -> float:
    return 10.0 if replicas <= 1000 else (30.0 if replicas <= 3000 else 40.0)


BestfitRow = tuple[int, int, int, float, float, float, float]


def bestfit_speed(
    fits: list[LatencyFit], ns: list[int], seed: int, repeat: int, use_kernel: bool = True
) -> list[BestfitRow]:
    """Per size: (replicas, models, GPUs used, min s, median s, peak MiB, first-call s) of
    best-fit ``plan(problem)``; the peak comes from one more run under tracemalloc (not
    timed); the first call is the untimed-before warm-up run (for the first size: numba import
    and kernel compile or cache load included)."""
    rows = []
    for n in tqdm(ns, desc="best-fit", unit="instance", leave=False):
        problem = synthetic_problem(fits, n, seed)
        t0 = time.perf_counter()
        out = placement.plan(
            problem, use_kernel=use_kernel
        )  # warm-up (imports, caches), and the plan to check
        first_s = time.perf_counter() - t0
        bad = placement.check_plan(problem, out)
        if bad:
            raise click.ClickException(f"invalid best-fit plan at {n} replicas: {bad[0]}")
        times = []
        for _ in range(repeat):
            gc.collect()  # each run starts from the same heap; the collector stays on
            t0 = time.perf_counter()
            placement.plan(problem, use_kernel=use_kernel)
            times.append(time.perf_counter() - t0)
        gc.collect()
        tracemalloc.start()
        placement.plan(problem, use_kernel=use_kernel)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            (
                n,
                len(problem.models),
                out.gpus_used,
                min(times),
                statistics.median(times),
                peak / 2**20,
                first_s,
            )
        )
    return rows


def _print_bestfit(rows: list[BestfitRow], repeat: int, use_kernel: bool = True) -> None:
    click.echo(
        f"| replicas | models | GPUs used | best-fit min s | median s ({repeat} runs) | "
        "ms / 1k replicas (min) | peak MiB (tracemalloc) | first call s (this process) |"
    )
    click.echo("|" + "---|" * 8)
    for n, models, gpus, lo, med, peak, first in rows:
        click.echo(
            f"| {n} | {models} | {gpus} | {lo:.4f} | {med:.4f} | {lo * 1e6 / n:.1f} | "
            f"{peak:.1f} | {first:.3f} |"
        )
    status = kernel_status(use_kernel)
    note = (
        "; the first call of the first size includes the numba import and the kernel "
        "compile (or its load from the on-disk cache)"
        if status.startswith("compiled")
        else ""
    )
    click.echo(f"\nbest-fit path: {status}{note}.")


@click.command(name="placement")
@click.option(
    "--sizes",
    default=None,
    help=f"Comma-separated replica counts [default: {DEFAULT_SIZES}; with --bestfit-only: "
    f"{BESTFIT_SIZES}].",
)
@click.option(
    "--bestfit-only",
    is_flag=True,
    help="Only time best-fit plan(problem) (no budget): min/median over --repeat runs, ms "
    "per 1,000 replicas, peak heap, and the first call in this process (numba compile or "
    "cache load at the first size). Seconds per size; --no-kernel times the numpy path.",
)
@click.option(
    "--no-kernel",
    is_flag=True,
    envvar="STOWPLAN_NO_KERNEL",
    help="Best-fit takes the numpy path instead of the compiled kernel (same plans; "
    "environment: STOWPLAN_NO_KERNEL=1).",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Timed runs per size for --bestfit-only.",
)
@click.option(
    "--time-limit",
    "time_limit_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Engine budget per instance (default: 10 s up to 1,000 replicas, 30 s up "
    "to 3,000, 40 s above).",
)
@click.option(
    "--reference-s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Also run the engine this long on the 1,000-replica instance (e.g. 600).",
)
@click.option("--seed", default=1, show_default=True, help="Instance seed.")
@click.option(
    "--quick",
    is_flag=True,
    help="Sizes 50 and 200, 2 s budget (< 1 minute); with --bestfit-only: 200 and 1,000, "
    "at most 3 runs (seconds).",
)
def command(
    sizes: str | None,
    bestfit_only: bool,
    no_kernel: bool,
    repeat: int,
    time_limit_s: float | None,
    reference_s: float,
    seed: int,
    quick: bool,
) -> None:
    """GPUs used by best-fit and by the engine vs a lower bound, with solve times; or, with
    --bestfit-only, the speed of best-fit alone."""
    use_kernel = not no_kernel
    fits = usable_fits(
        load_fits(data_dir() / "gpu-inference-latency" / "latency_vs_batch_linear_fits.csv")
    )
    if not fits:
        raise click.ClickException("no usable A100-80GB latency fits found")
    if sizes is None:
        sizes = BESTFIT_SIZES if bestfit_only else DEFAULT_SIZES
    try:
        ns = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise click.ClickException(f"--sizes: not a list of integers: {sizes!r}") from None
    if any(n <= 0 for n in ns):
        raise click.ClickException(f"--sizes: replica counts must be positive: {sizes!r}")
    if bestfit_only:
        if quick:
            ns, repeat = [200, 1000], min(repeat, 3)
        _print_bestfit(bestfit_speed(fits, ns, seed, repeat, use_kernel), repeat, use_kernel)
        return
    if quick:
        ns, time_limit_s = [50, 200], 2.0
    rows = []
    # warm-up: the numba import and kernel compile/cache load must not count in the first
    # size's traced peak heap (600 MiB per 1k replicas at 50 replicas without it)
    placement.plan(synthetic_problem(fits, 10, seed), use_kernel=use_kernel)
    warm_up()  # the column generation kernels: compiled or loaded outside the budgets
    for n in tqdm(ns, desc="placement", unit="instance", leave=False):
        problem = synthetic_problem(fits, n, seed)
        tracemalloc.start()
        t0 = time.monotonic()
        bf = placement.plan(problem, use_kernel=use_kernel)
        bf_s = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t0 = time.monotonic()
        bf = placement.plan(problem, use_kernel=use_kernel)  # untraced timing
        bf_s = time.monotonic() - t0
        budget = time_limit_s if time_limit_s is not None else _budget(n)
        eng = placement.plan(problem, time_limit_s=budget, use_kernel=use_kernel)
        bad = placement.check_plan(problem, bf) + placement.check_plan(problem, eng)
        if bad:
            raise click.ClickException(f"invalid plan at {n} replicas: {bad[0]}")
        lb = tight_lower_bound(problem)
        ref = ""
        if reference_s and n == 1000:
            long = placement.plan(problem, time_limit_s=reference_s, use_kernel=use_kernel)
            ref = f"{long.gpus_used} ({(eng.gpus_used / long.gpus_used - 1) * 100:+.1f} %)"
        rows.append(
            (
                n,
                len(problem.models),
                lb,
                bf.gpus_used,
                bf_s,
                eng.gpus_used,
                budget,
                eng.solve_seconds,
                len(eng.unplaced),
                peak,
                ref,
            )
        )
    click.echo(
        "| replicas | models | lower bound | best-fit GPUs | best-fit s | engine GPUs "
        "(budget) | engine s | gap to bound | unplaced | best-fit ms / 1k replicas | "
        "best-fit peak MiB / 1k replicas | 10-min reference (engine vs it) |"
    )
    click.echo("|" + "---|" * 12)
    for n, models, lb, bfg, bfs, eg, budget, es, unpl, peak, ref in rows:
        gap = (eg / lb - 1) * 100 if lb else 0.0
        click.echo(
            f"| {n} | {models} | {lb} | {bfg} | {bfs:.2f} | {eg} ({budget:g} s) | "
            f"{es:.1f} | {gap:+.1f} % | {unpl} | {bfs * 1000 / n * 1000:.0f} | "
            f"{peak / 2**20 / n * 1000:.1f} | {ref or 'not run'} |"
        )
