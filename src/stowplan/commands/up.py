"""``stowplan up DIR``: serve InferenceModel YAML files on this machine (standalone mode).

Thin shell over :mod:`stowplan.standalone` (read, place, load) and
:mod:`stowplan.agent.listeners` (HTTP and gRPC). Prints where everything went, serves until
Ctrl-C, then stops the executors cleanly.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from stowplan.agent.config import AgentSettings


@click.command(name="up")
@click.argument("directory", type=click.Path(path_type=Path), default=Path("manifests/examples"))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on.",
)
@click.option(
    "--grpc-port",
    default=8001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the gRPC service (inference.GRPCInferenceService); 0: no gRPC.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=Path.home() / ".cache" / "stowplan" / "models",
    show_default=True,
    help="Where example models are built and http(s) models downloaded.",
)
@click.option(
    "--sim-devices",
    type=click.IntRange(1, 64),
    default=None,
    help="Simulated devices when there is no GPU (default: as many as the plan needs).",
)
@click.option("--no-nvml", is_flag=True, help="Ignore real GPUs; use simulated devices.")
@click.option(
    "--solver-seconds",
    type=click.FloatRange(0, 600),
    default=0.0,
    show_default=True,
    help="Placement time budget (0: best-fit only).",
)
@click.option(
    "--intra-op-threads",
    type=click.IntRange(0, 256),
    default=1,
    show_default=True,
    help="ONNX Runtime intra-op threads per session (0: its default, one per core). One "
    "device thread runs one batch at a time; on a small CPU machine a second ORT thread only "
    "spins beside the event loop (measured: twice the agent's CPU per request on 2 cores).",
)
@click.option("--check", is_flag=True, help="Place and load, print the summary, and exit.")
def command(
    directory: Path,
    host: str,
    port: int,
    grpc_port: int,
    cache_dir: Path,
    sim_devices: int | None,
    no_nvml: bool,
    solver_seconds: float,
    intra_op_threads: int,
    check: bool,
) -> None:
    """Serve the InferenceModel YAML files in DIRECTORY (default manifests/examples).

    Places every model on this machine's GPUs (simulated CPU-backed devices when there are
    none), loads them with ONNX Runtime, and serves the Open Inference Protocol (KServe v2) at
    http://HOST:PORT/v2/... with Prometheus metrics at /metrics, and over gRPC
    (inference.GRPCInferenceService) at HOST:GRPC_PORT. Ctrl-C stops.
    """
    from stowplan import standalone
    from stowplan.agent.telemetry import Telemetry, detect

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = AgentSettings(
        host=host, port=port, cache_dir=cache_dir, intra_op_threads=intra_op_threads
    )
    # None lets standalone pick: NVML GPUs, else as many simulated devices as the plan needs.
    telemetry: Telemetry | None = None
    if sim_devices is not None:
        telemetry = detect(simulated_devices=sim_devices, use_nvml=not no_nvml)
    try:
        dep = standalone.up(
            directory, settings, telemetry, time_limit_s=solver_seconds, use_nvml=not no_nvml
        )
    except standalone.StandaloneError as exc:
        raise click.ClickException(str(exc)) from None
    url = f"http://{host}:{port}"
    click.echo(standalone.describe(dep, url))
    if check:
        dep.agent.close()
        return
    from stowplan.agent import grpc_server, listeners
    from stowplan.agent.server import create_app

    # Hand the GIL to the executor threads within 1 ms instead of Python's default 5 ms, so a
    # finished batch is not held back behind the event loop.
    sys.setswitchinterval(0.001)
    grpc_at = f" and grpc {grpc_server.address(host, grpc_port)}" if grpc_port else ""
    click.echo(f"serving on {url}{grpc_at} (Ctrl-C to stop)")
    try:
        listeners.run(create_app(dep.agent), dep.agent, host, port, grpc_port or None)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        dep.agent.close()
        click.echo("stopped")
