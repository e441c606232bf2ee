"""``stowplan bench http``: open-loop load against the agent serving a real ONNX model on CPU.

Thin shell over :mod:`stowplan.agentbench.httpload`; prints the Markdown table.
"""

from __future__ import annotations

import click


@click.command(name="http")
@click.option(
    "--model",
    default="mlp-wide",
    show_default=True,
    type=click.Choice(["mlp", "convnet", "mlp-wide"]),
    help="Example model to serve.",
)
@click.option(
    "--rate",
    "rates",
    multiple=True,
    type=click.FloatRange(1, 100_000),
    help="Offered request rate (repeatable; default 150, 300, 600).",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(["none", "static-8", "aimd"]),
    help="Batching policy (repeatable; default all).",
)
@click.option(
    "--duration",
    "duration_s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(1, 600),
    help="Seconds per (policy, rate).",
)
@click.option("--slo-ms", default=50.0, show_default=True, type=click.FloatRange(1, 60_000))
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="AIMD only, one rate, 3 s (< 1 min).")
def command(
    model: str,
    rates: tuple[float, ...],
    policies: tuple[str, ...],
    duration_s: float,
    slo_ms: float,
    seed: int,
    quick: bool,
) -> None:
    """Throughput and p50/p99 latency per batching policy over HTTP, and the agent's overhead
    per request over a direct ONNX Runtime call. Starts `stowplan up` in a subprocess."""
    from tqdm import tqdm

    from stowplan.agentbench import httpload

    rates = rates or ((100.0,) if quick else (150.0, 300.0, 600.0))
    policies = policies or (("aimd",) if quick else ("none", "static-8", "aimd"))
    if quick:
        duration_s = min(duration_s, 3.0)
    with tqdm(total=len(rates) * len(policies), desc="runs", leave=False) as bar:
        try:
            rows, direct = httpload.run(
                model, rates, policies, duration_s, slo_ms, seed, bar.update
            )
        except (RuntimeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(httpload.table(rows, direct, slo_ms))
