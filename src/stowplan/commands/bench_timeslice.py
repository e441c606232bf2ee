"""``stowplan bench timeslice``: the time-sliced executor vs unsynchronised per-model threads.

Thin shell over :mod:`stowplan.agentbench.timeslice`; prints the Markdown table.
"""

from __future__ import annotations

import click

from stowplan.shareddata import DataMissing


@click.command(name="timeslice")
@click.option(
    "--duration",
    "duration_s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Simulated seconds per mix.",
)
@click.option(
    "--load",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0.05, 2.0),
    help="Fraction of the largest load placement fits on one GPU.",
)
@click.option(
    "--interference",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 2),
    help="Slowdown per extra concurrent batch for the threads baseline.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="2- and 3-model mixes, 5 s each.")
@click.option(
    "--real",
    is_flag=True,
    help="Also run two real ONNX models on this CPU (in-process, no HTTP): one "
    "time-sliced executor vs one executor thread per model.",
)
def command(
    duration_s: float, load: float, interference: float, seed: int, quick: bool, real: bool
) -> None:
    """SLO attainment per model, 2 to 4 models with different SLOs on one simulated A100.

    Batch times follow published fits from ../shared/data/gpu-inference-latency; loads and
    budgets come from stowplan.placement.
    """
    from tqdm import tqdm

    from stowplan.agentbench import timeslice

    mixes = (2, 3) if quick else (2, 3, 4)
    if quick:
        duration_s = min(duration_s, 5.0)
    try:
        with tqdm(total=len(mixes), desc="mixes", leave=False) as bar:
            rows = timeslice.run(mixes, load, duration_s, interference, seed, bar.update)
    except (DataMissing, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(timeslice.table(rows, interference))
    if real:
        with tqdm(total=2, desc="real", leave=False) as bar:
            real_rows = timeslice.run_real(min(duration_s, 10.0), 1.0, seed, bar.update)
        click.echo()
        click.echo(timeslice.real_table(real_rows))
