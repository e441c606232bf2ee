"""``stowplan memsim``: replay allocation traces through the allocators and compare them.

Thin CLI over :mod:`stowplan.memlab.runner` and :mod:`stowplan.memlab.report`: parses options,
runs, prints a Markdown table per trace (or JSON with ``--json``), optionally writes the report
with plots and compact copies of the traces. Bad input ends with a one-line error, no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from tqdm import tqdm

from stowplan.memlab.allocators import CACHING_BASELINES
from stowplan.memlab.device import CostModel
from stowplan.memlab.errors import MemlabError
from stowplan.memlab.residency import ResidencyTrace


def _cost_model(settings: tuple[str, ...]) -> CostModel:
    values: dict[str, float] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--cost")
        if key not in CostModel.model_fields:
            known = ", ".join(CostModel.model_fields)
            raise click.BadParameter(
                f"unknown cost parameter {key!r} ({known})", param_hint="--cost"
            )
        try:
            values[key] = float(value)
        except ValueError as exc:
            raise click.BadParameter(
                f"{key}: not a number: {value!r}", param_hint="--cost"
            ) from exc
    try:
        return CostModel.model_validate(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cost") from exc


@click.command(name="memsim")
@click.argument("traces", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--allocator",
    "allocator",
    default="all",
    show_default=True,
    help="naive, bfc, pytorch, bestfit, buddy, stowplan, stowplan-warm, a comma list, or all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of Markdown tables.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    help="Write a Markdown report with PNG plots into this directory.",
)
@click.option(
    "--cost",
    "cost",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a cost-model parameter (e.g. free_sync_us=200); repeatable.",
)
@click.option(
    "--profile-from",
    type=click.Path(dir_okay=False),
    help="Trace of an earlier run that stowplan-warm learns from "
    "(default: a first replay of the same trace).",
)
@click.option(
    "--trace-allocator",
    metavar="NAME",
    help="Replay the records of this TF allocator name (e.g. GPU_0_bfc); default: the one "
    "with the most allocations (cpu in the shared logs).",
)
@click.option(
    "--save-compact",
    type=click.Path(file_okay=False),
    help="Also write each parsed trace to DIR/<name>.stwtrace.npz (reload it much faster).",
)
@click.option(
    "--residency",
    is_flag=True,
    help="Also replay the agent's own residency sequence: its ResidencyManager serving a "
    "seeded 8-model Zipf workload in a 2 GiB pool (a recorded .stwres.json trace, e.g. from "
    "stowplan memprobe --record-residency, replays the same way when given as a TRACE).",
)
def command(
    traces: tuple[str, ...],
    residency: bool,
    allocator: str,
    as_json: bool,
    report_dir: str | None,
    cost: tuple[str, ...],
    profile_from: str | None,
    save_compact: str | None,
    trace_allocator: str | None,
) -> None:
    """Replay TensorFlow __LOG_MEMORY__ traces (.log, .log.gz or .stwtrace.npz) through
    simulated allocators on a simulated cudaMalloc/cudaFree device and compare peak reserved
    memory, fragmentation, device calls, simulated overhead, locality and simulator speed.

    Example: stowplan memsim ../shared/data/tf-memlogs/*.log.gz --report docs/memlab
    """
    from stowplan.memlab.alloc_trace import COMPACT_SUFFIX
    from stowplan.memlab.alloc_trace import save_compact as save
    from stowplan.memlab.parser import load_trace
    from stowplan.memlab.residency import is_residency_trace, load_residency
    from stowplan.memlab.runner import (
        growth_table,
        markdown_table,
        residency_markdown,
        resolve_allocators,
        run_residency,
        run_trace,
        targets_table,
    )

    cost_model = _cost_model(cost)
    if not traces and not residency:
        raise click.UsageError("give TRACES or --residency")
    tensor_traces = [t for t in traces if not is_residency_trace(t)]
    try:
        names = resolve_allocators(allocator)
        held = [(t, load_residency(t)) for t in traces if is_residency_trace(t)]
        if residency:
            held.insert(0, ("agent-demo.stwres.json", _demo_trace()))
        pools = [run_residency(path, t, names, cost_model) for path, t in held]
        source = load_trace(profile_from) if profile_from else None
        runs = []
        total = len(tensor_traces) * len(names)
        bar = tqdm(total=total, desc="memsim", unit="run", file=sys.stderr, disable=not total)
        with bar:
            for path in tensor_traces:
                run = run_trace(
                    path,
                    names,
                    cost_model,
                    profile_from=source,
                    progress=bar.set_postfix_str,
                    trace_allocator=trace_allocator,
                )
                bar.update(len(names))
                runs.append(run)
                if save_compact:
                    out = Path(save_compact)
                    out.mkdir(parents=True, exist_ok=True)
                    stem = Path(path).name.removesuffix(".gz").removesuffix(".log")
                    save(run.trace, out / f"{stem}{COMPACT_SUFFIX}")
        if report_dir:
            from stowplan.memlab.report import write_report

            argv = " ".join(["stowplan memsim", *sys.argv[2:]]) if len(sys.argv) > 2 else ""
            written = write_report(runs, Path(report_dir), cost_model, argv, pools)
            click.echo(f"report written to {written}", err=True)
    except MemlabError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        body = {"traces": [r.to_json() for r in runs], "residency": [p.to_json() for p in pools]}
        click.echo(json.dumps(body, indent=2))
        return
    for pool in pools:
        click.echo(residency_markdown(pool))
        click.echo()
    for run in runs:
        bad = run.trace.stats.malformed_records
        click.echo(markdown_table(run))
        if bad:
            first = ", ".join(
                f"line {n}: {why}" for n, why in run.trace.stats.malformed_examples[:3]
            )
            click.echo(f"\n{bad} malformed memory record(s) skipped ({first})")
        click.echo()
    stow = [n for n in ("stowplan", "stowplan-warm") if n in names]
    if stow and "pytorch" in names and runs:
        click.echo("Targets (issues 5 and 15):\n")
        click.echo(targets_table(runs, stow))
        if all(n in names for n in ("stowplan", *CACHING_BASELINES)):
            click.echo("\nCold growth vs what any online growth policy can reach (issue 15):\n")
            click.echo(growth_table(runs))


POOL_BYTES = 2 << 30  # the demo's device pool (the agent reserves it once)


def _demo_trace() -> ResidencyTrace:
    """The agent's ResidencyManager serving the demo workload, as the trace it records."""
    from stowplan.agent.memory import ResidencyManager
    from stowplan.memlab.residency import demo_workload

    ticks = iter(range(1 << 62))
    pool = ResidencyManager(POOL_BYTES, clock=lambda: float(next(ticks)), record=True)
    sizes, order = demo_workload()
    for name, size in sizes.items():
        pool.register(name, size, 0)
    for name in order:
        pool.acquire(name)
        pool.release(name)
    return pool.trace()
