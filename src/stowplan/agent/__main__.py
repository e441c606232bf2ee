"""``python -m stowplan.agent`` / ``stowplan-agent``: the per-node agent in cluster mode.

Serves the Open Inference Protocol on HOST:PORT (HTTP) and HOST:GRPC_PORT (gRPC) and keeps
this node's ``GPUNode`` in step (register, watch own object, load/unload to match
``spec.assignments``, write ``status``).
Configuration comes from flags or the environment: ``STOWPLAN_NODE_NAME`` from the downward
API, ``KUBECONFIG`` outside a cluster, and the CPU / host memory replicas may use
(``STOWPLAN_ALLOCATABLE_CPU`` / ``STOWPLAN_ALLOCATABLE_MEMORY``, from the container's own limits
through the downward API, so the agent needs no permission to read Node objects). Ctrl-C /
SIGTERM stop cleanly. For one machine without a cluster use ``stowplan up`` instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from stowplan.agent.config import AgentSettings
from stowplan.api import quantity


def _quantity(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A Kubernetes quantity or None (an empty environment variable counts as unset)."""
    if value is None or value.strip() == "":
        return None
    try:
        quantity.parse(value.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value.strip()


_BUDGET = (
    " Reported in GPUNode.status.allocatable; the operator places replicas on this node only "
    "while their resources.requests add up to at most this. Unset: no limit."
)


@click.command(name="stowplan-agent")
@click.option(
    "--node",
    envvar="STOWPLAN_NODE_NAME",
    required=True,
    help="This node's name (the GPUNode it owns). Env: STOWPLAN_NODE_NAME.",
)
@click.option(
    "--kubeconfig",
    envvar="KUBECONFIG",
    default=None,
    help="Kubeconfig file (default: in-cluster config). Env: KUBECONFIG.",
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--grpc-port",
    default=8001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the gRPC service (inference.GRPCInferenceService); 0: no gRPC.",
)
@click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    default=Path("/tmp/stowplan-models"),
    show_default=True,
    help="Cache for models fetched over http(s).",
)
@click.option(
    "--endpoint",
    envvar="STOWPLAN_ENDPOINT",
    default=None,
    help="URL reported in GPUNode.status.endpoint (default http://POD_IP:PORT).",
)
@click.option(
    "--pod-ip",
    envvar="POD_IP",
    default=None,
    help="This pod's IP (the Downward API's status.podIP) for the default endpoint; "
    "default: --host.",
)
@click.option(
    "--status-interval",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.2, 3600),
    help="Seconds between status updates.",
)
@click.option(
    "--sim-devices",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Simulated devices when NVML finds no GPU.",
)
@click.option(
    "--allocatable-cpu",
    envvar="STOWPLAN_ALLOCATABLE_CPU",
    callback=_quantity,
    metavar="QUANTITY",
    help="CPU this agent's replicas may use together, e.g. 8 or 7500m (normally the "
    "container's limits.cpu)." + _BUDGET + " Env: STOWPLAN_ALLOCATABLE_CPU.",
)
@click.option(
    "--allocatable-memory",
    envvar="STOWPLAN_ALLOCATABLE_MEMORY",
    callback=_quantity,
    metavar="QUANTITY",
    help="Host memory this agent's replicas may use together, e.g. 32Gi or bytes (normally "
    "the container's limits.memory)." + _BUDGET + " Env: STOWPLAN_ALLOCATABLE_MEMORY.",
)
@click.option(
    "--reserved-cpu",
    envvar="STOWPLAN_RESERVED_CPU",
    callback=_quantity,
    metavar="QUANTITY",
    help="CPU the agent keeps for itself (HTTP, batching, status), subtracted from "
    "--allocatable-cpu. Env: STOWPLAN_RESERVED_CPU.",
)
@click.option(
    "--reserved-memory",
    envvar="STOWPLAN_RESERVED_MEMORY",
    callback=_quantity,
    metavar="QUANTITY",
    help="Host memory the agent keeps for itself, subtracted from --allocatable-memory. "
    "Env: STOWPLAN_RESERVED_MEMORY.",
)
@click.option(
    "--intra-op-threads",
    envvar="STOWPLAN_INTRA_OP_THREADS",
    default=0,
    type=click.IntRange(0, 1024),
    help="ONNX Runtime threads per model session; 0: the whole CPUs of --allocatable-cpu "
    "(less --reserved-cpu; at least 1), or ONNX Runtime's default (every core of the machine, "
    "whatever the container's limit) without one. Env: STOWPLAN_INTRA_OP_THREADS.",
)
@click.option(
    "--residency-trace-dir",
    envvar="STOWPLAN_RESIDENCY_TRACE_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Record each device pool's load/offload/prefetch sequence and write it here as "
    "device-N.stwres.json on shutdown (replay: stowplan memsim FILE). Env: "
    "STOWPLAN_RESIDENCY_TRACE_DIR.",
)
@click.option(
    "--max-inflight-requests",
    envvar="STOWPLAN_MAX_INFLIGHT_REQUESTS",
    default=AgentSettings.model_fields["max_inflight_requests"].default,
    show_default=True,
    type=click.IntRange(1),
    help="Most inference requests (HTTP and gRPC together) taken in and not yet answered; past "
    "it a new one gets 503 + Retry-After (gRPC UNAVAILABLE) before its body is read. "
    "Env: STOWPLAN_MAX_INFLIGHT_REQUESTS.",
)
@click.option(
    "--max-inflight-bytes",
    envvar="STOWPLAN_MAX_INFLIGHT_BYTES",
    default=AgentSettings.model_fields["max_inflight_bytes"].default,
    show_default=True,
    type=click.IntRange(1024),
    help="Most request-body bytes of the requests in flight (the same refusal past it; a lone "
    "request always enters). Env: STOWPLAN_MAX_INFLIGHT_BYTES.",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
)
def main(
    node: str,
    kubeconfig: str | None,
    host: str,
    port: int,
    grpc_port: int,
    models_dir: Path,
    endpoint: str | None,
    pod_ip: str | None,
    status_interval: float,
    sim_devices: int,
    allocatable_cpu: str | None,
    allocatable_memory: str | None,
    reserved_cpu: str | None,
    reserved_memory: str | None,
    intra_op_threads: int,
    residency_trace_dir: Path | None,
    max_inflight_requests: int,
    max_inflight_bytes: int,
    log_level: str,
) -> None:
    """Run the stowplan agent for NODE: serve models and sync the node's GPUNode."""
    from stowplan.agent import gpunode_sync, listeners
    from stowplan.agent.server import create_app
    from stowplan.agent.serving import Agent
    from stowplan.agent.telemetry import detect

    offered = gpunode_sync.allocatable(
        allocatable_cpu, allocatable_memory, reserved_cpu, reserved_memory
    )
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(0.001)  # hand the GIL to executor threads quickly
    settings = AgentSettings(
        node_name=node,
        host=host,
        port=port,
        cache_dir=models_dir,
        intra_op_threads=intra_op_threads or gpunode_sync.session_threads(offered),
        residency_trace_dir=residency_trace_dir,
        max_inflight_requests=max_inflight_requests,
        max_inflight_bytes=max_inflight_bytes,
    )
    agent = Agent(settings, detect(simulated_devices=sim_devices))
    url = endpoint or f"http://{pod_ip or host}:{port}"
    try:
        api, labels = gpunode_sync.kube_api(kubeconfig)
        sync = gpunode_sync.GpuNodeSync(
            agent,
            api,
            node,
            url,
            models_dir,
            status_interval,
            node_labels=lambda: labels(node),
            offered=offered,
        )
        sync.start()
    except Exception as exc:
        agent.close()
        raise click.ClickException(f"cannot reach the Kubernetes API: {exc}") from None
    try:
        listeners.run(create_app(agent), agent, host, port, grpc_port or None)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        sync.stop()
        agent.close()


if __name__ == "__main__":
    main()
