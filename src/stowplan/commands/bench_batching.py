"""``stowplan bench batching``: batching policies vs load on a simulated device.

Thin shell over :mod:`stowplan.agentbench.batching`; prints the Markdown table the README quotes.
"""

from __future__ import annotations

import click

from stowplan.shareddata import DataMissing


@click.command(name="batching")
@click.option(
    "--duration",
    "duration_s",
    default=20.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Simulated seconds per workload.",
)
@click.option(
    "--max-queue-delay-ms",
    type=click.FloatRange(0, 1000),
    default=None,
    help="Bounded wait for static/Triton/AIMD (default: min(5, SLO/10)).",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="One device, fewer workloads, 5 s each (< 1 min).")
def command(duration_s: float, max_queue_delay_ms: float | None, seed: int, quick: bool) -> None:
    """Goodput and SLO attainment of none / best static / Triton-style / AIMD batching.

    The device's batch time follows published latency fits from
    ../shared/data/gpu-inference-latency; arrivals are Poisson and the Azure LLM traces scaled
    to the device.
    """
    from tqdm import tqdm

    from stowplan.agentbench import batching

    if quick:
        duration_s = min(duration_s, 5.0)
    total = 4 if quick else 15
    try:
        with tqdm(total=total, desc="workloads", file=None, leave=False) as bar:
            rows = batching.run(duration_s, max_queue_delay_ms, seed, quick, bar.update)
    except DataMissing as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(batching.table(rows))
    click.echo()
    click.echo(batching.summary(rows))
