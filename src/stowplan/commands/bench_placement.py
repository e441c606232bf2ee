"""``stowplan bench placement``: SLO-aware packing on instances built from real latency fits.

Reads ``gpu-inference-latency/latency_vs_batch_linear_fits.csv`` (under ``../shared/data`` or
``$STOWPLAN_DATA``), builds instances with ``placement.synth`` and prints a Markdown table:
GPUs used by best-fit and by the engine with a time budget, the lower bound, solve times, and
time and memory per 1,000 replicas. Thin shell: reading, timing and printing only.
"""

from __future__ import annotations

import csv
import time
import tracemalloc
from pathlib import Path

import click
from tqdm import tqdm

from stowplan import placement
from stowplan.commands.bench_fgd import data_dir
from stowplan.placement.planner import tight_lower_bound
from stowplan.placement.synth import LatencyFit, synthetic_problem, usable_fits

DEFAULT_SIZES = "50,200,1000,3000,10000"


def load_fits(path: Path) -> list[LatencyFit]:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc} (set STOWPLAN_DATA?)") from None
    out = []
    for line, r in enumerate(rows, start=2):
        try:
            out.append(
                LatencyFit(
                    r["source_file"],
                    r["gpu_model"],
                    float(r["fit_a_ms"]),
                    float(r["fit_b_ms_per_item"]),
                    int(float(r["batch_max"])),
                )
            )
        except (KeyError, ValueError) as exc:
            raise click.ClickException(f"{path}:{line}: bad row ({exc})") from None
    return out


def _budget(replicas: int) -> float:
    return 10.0 if replicas <= 1000 else (30.0 if replicas <= 3000 else 40.0)


@click.command(name="placement")
@click.option(
    "--sizes", default=DEFAULT_SIZES, show_default=True, help="Comma-separated replica counts."
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
@click.option("--quick", is_flag=True, help="Sizes 50 and 200, 2 s budget (< 1 minute).")
def command(
    sizes: str, time_limit_s: float | None, reference_s: float, seed: int, quick: bool
) -> None:
    """GPUs used by best-fit and by the engine vs a lower bound, with solve times."""
    fits = usable_fits(
        load_fits(data_dir() / "gpu-inference-latency" / "latency_vs_batch_linear_fits.csv")
    )
    if not fits:
        raise click.ClickException("no usable A100-80GB latency fits found")
    try:
        ns = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise click.ClickException(f"--sizes: not a list of integers: {sizes!r}") from None
    if quick:
        ns, time_limit_s = [50, 200], 2.0
    rows = []
    for n in tqdm(ns, desc="placement", unit="instance", leave=False):
        problem = synthetic_problem(fits, n, seed)
        tracemalloc.start()
        t0 = time.monotonic()
        bf = placement.plan(problem)
        bf_s = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t0 = time.monotonic()
        bf = placement.plan(problem)  # untraced timing
        bf_s = time.monotonic() - t0
        budget = time_limit_s if time_limit_s is not None else _budget(n)
        eng = placement.plan(problem, time_limit_s=budget)
        bad = placement.check_plan(problem, bf) + placement.check_plan(problem, eng)
        if bad:
            raise click.ClickException(f"invalid plan at {n} replicas: {bad[0]}")
        lb = tight_lower_bound(problem)
        ref = ""
        if reference_s and n == 1000:
            long = placement.plan(problem, time_limit_s=reference_s)
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
