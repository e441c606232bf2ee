"""``stowplan bench dataplane``: the same model and input through a direct ONNX Runtime call,
the agent's data paths (HTTP/JSON, HTTP/binary, gRPC) and KServe's Python ModelServer (REST),
closed loop at rising concurrency, or (``--open-loop``) Poisson arrivals at rising rates with
goodput within the served manifest's SLO compared against KServe's.

Thin shell over :mod:`stowplan.agentbench.dataplane`; prints the Markdown table, and writes the
plot with ``--plot``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
    help="Data path (repeatable; default http-json, http-binary, grpc, kserve-rest; "
    "kserve-rest needs kserve from the dev extra and is left out of the default without it). "
    "echo-http and echo-grpc (not in the default) time the agent's HTTP and gRPC stacks "
    "answering a fixed response: the floor under the agent's paths.",
)
@click.option(
    "--duration",
    "duration_s",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.5, 600),
    help="Seconds per (path, concurrency).",
)
@click.option(
    "--open-loop",
    is_flag=True,
    help="Open loop instead: Poisson arrivals at each --rates rate for --duration s; the agent "
    "serves the example's manifest (its SLO and batching policy), then with batching none.",
)
@click.option(
    "--rates",
    default="50,100,200,400",
    show_default=True,
    help="Offered rates (req/s, comma-separated) for --open-loop.",
)
@click.option(
    "--max-in-flight",
    default=256,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Open loop: most requests outstanding; arrivals beyond it are counted, not sent.",
)
@click.option(
    "--manifests",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("manifests/examples"),
    show_default=True,
    help="Open loop: the directory holding the model's InferenceModel (its SLO and batching).",
)
@click.option(
    "--stages",
    "stages",
    is_flag=True,
    help="Instead: where one request's time goes inside the agent (HTTP/binary and gRPC, one "
    "request at a time, --duration s each): p50 and mean of each stage.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Concurrency 1 and 4, 2 s each (< 1 min).")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write latency and throughput against concurrency per path to this PNG.",
)
def command(
    model: str,
    concurrencies: tuple[int, ...],
    paths: tuple[str, ...],
    duration_s: float,
    open_loop: bool,
    rates: str,
    max_in_flight: int,
    manifests: Path,
    seed: int,
    stages: bool,
    quick: bool,
    plot_path: Path | None,
) -> None:
    """p50/p99 latency, throughput and overhead over a direct ONNX Runtime call of each data
    path, side by side. Starts `stowplan up` (batching none), then KServe's ModelServer, each
    in a subprocess and alone in turn."""
    from tqdm import tqdm

    from stowplan.agentbench import dataplane

    concurrencies = concurrencies or ((1, 4) if quick else (1, 4, 16, 64))
    if not paths:
        paths = tuple(p for p, f in dataplane.PATHS.items() if f.default)
        if importlib.util.find_spec("kserve") is None:  # finds, does not import
            paths = tuple(p for p in paths if dataplane.PATHS[p].server != "kserve")
            click.echo("kserve is not installed (dev extra): skipping kserve-rest", err=True)
    if quick:
        duration_s = min(duration_s, 2.0)
    if stages:
        try:
            stage_rows = dataplane.run_stages(model, duration_s, seed)
        except (RuntimeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(dataplane.stages_table(stage_rows, model))
        return
    if open_loop:
        _open_loop(model, rates, duration_s, paths, manifests, seed, max_in_flight, plot_path)
        return
    with tqdm(total=len(concurrencies) * (1 + len(paths)), desc="runs", leave=False) as bar:
        try:
            rows = dataplane.run(
                model, concurrencies, duration_s, paths, seed=seed, progress=bar.update
            )
        except (RuntimeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(dataplane.table(rows, model))
    if plot_path is not None:
        dataplane.plot(rows, model, plot_path)
        click.echo(f"plot: {plot_path}")


def _open_loop(
    model: str,
    rates_text: str,
    duration_s: float,
    paths: tuple[str, ...],
    manifests: Path,
    seed: int,
    max_in_flight: int,
    plot_path: Path | None,
) -> None:
    from tqdm import tqdm

    from stowplan.agentbench import dataplane

    try:
        rates = [float(r) for r in rates_text.split(",") if r.strip()]
    except ValueError:
        msg = f"not a list of numbers: {rates_text!r}"
        raise click.BadParameter(msg, param_hint="--rates") from None
    if not rates or min(rates) <= 0:
        raise click.BadParameter("give one or more positive rates", param_hint="--rates")
    agent = sum(dataplane.PATHS[p].server == "agent" for p in paths if p in dataplane.PATHS)
    runs = len(rates) * (2 * agent + len(paths) - agent)  # two batching policies for the agent
    with tqdm(total=runs, desc="runs", leave=False) as bar:
        try:
            rows, slo_ms = dataplane.run_open(
                model, rates, duration_s, paths, manifests, seed, max_in_flight, bar.update
            )
        except (RuntimeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(dataplane.open_table(rows, model, slo_ms, max_in_flight))
    if plot_path is not None:
        dataplane.plot([], model, plot_path, rows, slo_ms)
        click.echo(f"plot: {plot_path}")
