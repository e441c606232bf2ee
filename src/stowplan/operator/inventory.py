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

import math
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

from stowplan import api, placement
from stowplan.api import gpunode as gn
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


Location = tuple[str, int]  # (GPUNode name, GPU index)
ReplicaKey = tuple[str, int]  # (namespace/name, replica index)


def locations(
    nodes: Iterable[api.GPUNode], models: Iterable[api.InferenceModel]
) -> tuple[dict[ReplicaKey, Location], list[tuple[str, gn.Assignment]]]:
    """One location per replica, and the other copies (``(node, assignment)``, "draining").

    A replica is listed by two GPUNodes' ``spec.assignments`` while it moves (make before
    break: it is added on its new GPU first) or when a pass was cut off half-way. The location
    kept is the one the desired state agrees with (the model's ``status.placements``, written
    by the pass that started the move), else the one whose agent reports it Ready, else the
    first by node name, so a re-plan never sees a replica twice."""
    agreed: dict[ReplicaKey, Location] = {}
    for im in models:
        for p in im.status.placements if im.status is not None else []:
            agreed[(model_key(im), p.replica)] = (p.node, p.gpu)
    ready = {
        (m.model, m.replica, node.metadata.name, m.gpu)
        for node in nodes
        if node.status is not None
        for m in node.status.models
        if m.state == "Ready"
    }
    seen: dict[ReplicaKey, list[tuple[str, gn.Assignment]]] = {}
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        for a in node.spec.assignments:
            seen.setdefault((a.model, a.replica), []).append((node.metadata.name, a))
    kept: dict[ReplicaKey, Location] = {}
    draining: list[tuple[str, gn.Assignment]] = []
    for key, copies in seen.items():
        where = [(n, a.gpu) for n, a in copies]
        if key in agreed and agreed[key] in where:
            choice = agreed[key]
        else:
            choice = next(((n, g) for n, g in where if (*key, n, g) in ready), where[0])
        kept[key] = choice
        draining.extend((n, a) for n, a in copies if (n, a.gpu) != choice)
    return kept, draining


def current(
    nodes: Iterable[api.GPUNode],
    models: Sequence[placement.ModelDemand],
    inventory: Sequence[placement.Gpu],
    kept: dict[ReplicaKey, Location] | None = None,
) -> tuple[placement.Assignment, ...]:
    """The running placement, restricted to models and GPUs that still exist, one location
    per replica (``kept``, from :func:`locations`; without it the first copy wins)."""
    replicas = {m.name: m.replicas for m in models}
    present = {g.key for g in inventory}
    out = {}
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        for a in node.spec.assignments:
            if replicas.get(a.model, 0) <= a.replica or (node.metadata.name, a.gpu) not in present:
                continue
            key = (a.model, a.replica)
            if key in out or (kept is not None and kept.get(key) != (node.metadata.name, a.gpu)):
                continue
            out[key] = placement.Assignment(
                model=a.model,
                replica=a.replica,
                node=node.metadata.name,
                gpu=a.gpu,
                batch_size=a.batch_size,
                duty_cycle_ms=a.duty_cycle_ms,
                busy_ms=a.busy_ms,
                memory_mib=a.memory_mib,
            )
    return tuple(sorted(out.values(), key=lambda a: (a.model, a.replica)))


def _reserve_draining(
    inventory: tuple[placement.Gpu, ...], draining: list[tuple[str, gn.Assignment]]
) -> tuple[placement.Gpu, ...]:
    """A GPU still serving a replica that moved away keeps that replica's memory until the
    copy is removed, so nothing new is planned into memory that is still in use."""
    held: dict[tuple[str, int], float] = {}
    for node, a in draining:
        held[(node, a.gpu)] = held.get((node, a.gpu), 0.0) + a.memory_mib
    if not held:
        return inventory
    return tuple(
        g.model_copy(update={"memory_mib": max(1, g.memory_mib - math.ceil(held[g.key]))})
        if g.key in held
        else g
        for g in inventory
    )


def problem(
    models: Iterable[api.InferenceModel],
    nodes: Iterable[api.GPUNode],
    *,
    memory_reserve_mib: int = 0,
    now: datetime | None = None,
    stale_after_s: float = float("inf"),
    unavailable: Collection[str] = (),
) -> placement.Problem:
    """The placement problem; nodes whose heartbeat is older than ``stale_after_s`` at ``now``
    offer no GPUs, so their replicas are re-placed elsewhere. A replica listed twice counts once
    (:func:`locations`); the memory of its other copy stays held on that GPU. Nodes named in
    ``unavailable`` (a cordoned or deleted Kubernetes Node) offer nothing either."""
    node_list = [n for n in nodes if n.metadata.name not in unavailable]
    if now is not None:
        node_list = [n for n in node_list if not is_stale(n, now, stale_after_s)]
    model_list = list(models)
    demands = tuple(sorted((demand(im) for im in model_list), key=lambda d: d.name))
    inventory = gpus(node_list)
    kept, draining = locations(node_list, model_list)
    names = {d.name: d.replicas for d in demands}
    still_needed = [(n, a) for n, a in draining if a.replica < names.get(a.model, 0)]
    return placement.Problem(
        gpus=_reserve_draining(inventory, still_needed),
        models=demands,
        current=current(node_list, demands, inventory, kept),
        memory_reserve_mib=memory_reserve_mib,
        nodes=node_resources(node_list, inventory),
    )
