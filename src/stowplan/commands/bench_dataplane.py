"""``stowplan bench dataplane``: the same model and input through a direct ONNX Runtime call and
the agent's data paths (HTTP/JSON, HTTP/binary), closed loop at rising concurrency.

Thin shell over :mod:`stowplan.agentbench.dataplane`; prints the Markdown table.
"""

from __future__ import annotations

import click


@click.command(name="dataplane")
@click.option(
    "--model",
    default="mlp",
    show_default=True,
    type=click.Choice(["mlp", "convnet", "mlp-wide"]),
    help="Example model to serve.",
)
@click.option(
    "--concurrency",
    "concurrencies",
    multiple=True,
    type=click.IntRange(1, 1024),
    help="Closed-loop workers (repeatable; default 1, 4, 16, 64).",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    help="Agent data path (repeatable; default every registered one: http-json, http-binary).",
)
@click.option(
    "--duration",
    "duration_s",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.5, 600),
    help="Seconds per (path, concurrency).",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Concurrency 1 and 4, 2 s each (< 1 min).")
def command(
    model: str,
    concurrencies: tuple[int, ...],
    paths: tuple[str, ...],
    duration_s: float,
    seed: int,
    quick: bool,
) -> None:
    """p50/p99 latency, throughput and overhead over a direct ONNX Runtime call of each data
    path, side by side. Starts `stowplan up` (batching none) in a subprocess."""
    from tqdm import tqdm

    from stowplan.agentbench import dataplane

    concurrencies = concurrencies or ((1, 4) if quick else (1, 4, 16, 64))
    paths = paths or tuple(dataplane.PATHS)
    if quick:
        duration_s = min(duration_s, 2.0)
    with tqdm(total=len(concurrencies) * (1 + len(paths)), desc="runs", leave=False) as bar:
        try:
            rows = dataplane.run(
                model, concurrencies, duration_s, paths, seed=seed, progress=bar.update
            )
        except (RuntimeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(dataplane.table(rows, model))
