"""Translate API objects into a placement Problem (an anti-corruption layer; pure).

Callers: :mod:`stowplan.operator.fleet`. Input is the InferenceModel and GPUNode objects as
parsed API types; output is a :class:`stowplan.placement.Problem` whose model names are
``namespace/name``, whose GPUs come from each GPUNode's ``status.gpus`` (the agent's view), and
whose ``current`` placement comes from each GPUNode's ``spec.assignments`` (what the operator
wrote before), so a re-plan keeps running replicas where they are. CPU and host memory: each
replica's ``spec.resources.requests`` (rounded up to milli-CPU / MiB) becomes the demand's
``cpu_milli`` / ``host_memory_mib``, and each GPUNode's ``status.allocatable`` (rounded down)
becomes a ``NodeResources`` entry; a node without it is not listed (no limit), so a fleet that
uses neither gets exactly the Problem it got before these fields existed. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from stowplan import api, placement
from stowplan.api import quantity
from stowplan.demands import model_demand

#: Stands for "no limit" on the half of ``allocatable`` an agent left out (NodeResources takes
#: both numbers); no replica's request reaches it (parsed quantities are clamped to it).
NO_LIMIT = quantity.MAX_VALUE


def model_key(im: api.InferenceModel) -> str:
    """The placement name of an InferenceModel: ``namespace/name``."""
    return f"{im.metadata.namespace or 'default'}/{im.metadata.name}"


def demand(im: api.InferenceModel) -> placement.ModelDemand:
    return model_demand(model_key(im), im.spec)


def is_stale(node: api.GPUNode, now: datetime, stale_after_s: float) -> bool:
    """True when the node's agent stopped heartbeating (a node without heartbeat is trusted)."""
    if node.status is None or node.status.heartbeat is None:
        return False
    beat = datetime.fromisoformat(node.status.heartbeat.replace("Z", "+00:00"))
    return (now - beat).total_seconds() > stale_after_s


def gpus(nodes: Iterable[api.GPUNode]) -> tuple[placement.Gpu, ...]:
    out = []
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        if node.status is None:
            continue  # the agent has not reported its GPUs yet
        for gpu in sorted(node.status.gpus, key=lambda g: g.index):
            out.append(
                placement.Gpu(
                    node=node.metadata.name,
                    index=gpu.index,
                    memory_mib=max(gpu.memory_total_mib, 1),
                    gpu_type=gpu.name,
                    labels=dict(node.metadata.labels),
                )
            )
    return tuple(out)


def node_resources(
    nodes: Iterable[api.GPUNode], inventory: Sequence[placement.Gpu]
) -> tuple[placement.NodeResources, ...]:
    """CPU and host memory of the nodes whose agent reports ``status.allocatable`` and that
    offer GPUs in ``inventory``; nodes not listed have no limit."""
    present = {g.node for g in inventory}
    out = []
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        alloc = node.status.allocatable if node.status is not None else None
        if node.metadata.name not in present or alloc is None:
            continue
        if alloc.cpu is None and alloc.memory is None:
            continue
        out.append(
            placement.NodeResources(
                node=node.metadata.name,
                cpu_milli=NO_LIMIT
                if alloc.cpu is None
                else quantity.cpu_milli(alloc.cpu, round_up=False),
                memory_mib=NO_LIMIT
                if alloc.memory is None
                else quantity.memory_mib(alloc.memory, round_up=False),
            )
        )
    return tuple(out)


def current(
    nodes: Iterable[api.GPUNode],
    models: Sequence[placement.ModelDemand],
    inventory: Sequence[placement.Gpu],
) -> tuple[placement.Assignment, ...]:
    """The running placement, restricted to models and GPUs that still exist."""
    replicas = {m.name: m.replicas for m in models}
    present = {g.key for g in inventory}
    out = []
    for node in nodes:
        for a in node.spec.assignments:
            if replicas.get(a.model, 0) <= a.replica or (node.metadata.name, a.gpu) not in present:
                continue
            out.append(
                placement.Assignment(
                    model=a.model,
                    replica=a.replica,
                    node=node.metadata.name,
                    gpu=a.gpu,
                    batch_size=a.batch_size,
                    duty_cycle_ms=a.duty_cycle_ms,
                    busy_ms=a.busy_ms,
                    memory_mib=a.memory_mib,
                )
            )
    return tuple(sorted(out, key=lambda a: (a.model, a.replica)))


def problem(
    models: Iterable[api.InferenceModel],
    nodes: Iterable[api.GPUNode],
    *,
    memory_reserve_mib: int = 0,
    now: datetime | None = None,
    stale_after_s: float = float("inf"),
) -> placement.Problem:
    """The placement problem; nodes whose heartbeat is older than ``stale_after_s`` at ``now``
    offer no GPUs, so their replicas are re-placed elsewhere."""
    node_list = list(nodes)
    if now is not None:
        node_list = [n for n in node_list if not is_stale(n, now, stale_after_s)]
    demands = tuple(sorted((demand(im) for im in models), key=lambda d: d.name))
    inventory = gpus(node_list)
    return placement.Problem(
        gpus=inventory,
        models=demands,
        current=current(node_list, demands, inventory),
        memory_reserve_mib=memory_reserve_mib,
        nodes=node_resources(node_list, inventory),
    )
