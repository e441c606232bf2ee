"""Turn a placement Plan plus what the agents observe into desired API state (pure).

Callers: :mod:`stowplan.operator.fleet`. Given the InferenceModels, the GPUNodes and the Plan,
compute (1) each GPUNode's desired ``spec.assignments``, (2) each InferenceModel's desired
``status`` and (3) the events worth emitting. Nothing here talks to the API server; the caller
compares desired with actual and writes only differences, which is what makes reconciliation
idempotent (a restarted operator that computes the same plan writes nothing).

Condition timestamps are preserved while a condition's status is unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from stowplan import api, demands, placement
from stowplan.api import gpunode as gn
from stowplan.api import inferencemodel as imapi
from stowplan.operator import endpoints, inventory


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on an InferenceModel."""

    namespace: str
    name: str
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Desired:
    node_assignments: dict[str, list[gn.Assignment]]
    model_status: dict[str, imapi.InferenceModelStatus]
    events: list[Event] = field(default_factory=list)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    previous: Sequence[api.Condition],
    type_: str,
    status: api.ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> api.Condition:
    old = next((c for c in previous if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    return api.Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )


def desired_state(
    models: Sequence[api.InferenceModel],
    nodes: Sequence[api.GPUNode],
    plan: placement.Plan,
    *,
    now: str | None = None,
    keep: Sequence[tuple[str, gn.Assignment]] = (),
) -> Desired:
    """``keep``: old copies of moving replicas left on their node this pass (``(node,
    assignment)``, from :func:`.moves.make_before_break`); they stay in that node's
    assignments, and a kept copy that is Ready counts for its replica's readiness."""
    now = now or now_rfc3339()
    by_key = {inventory.model_key(im): im for im in models}
    node_assignments: dict[str, list[gn.Assignment]] = {n.metadata.name: [] for n in nodes}
    per_model: dict[str, list[placement.Assignment]] = defaultdict(list)
    for a in plan.assignments:
        im = by_key[a.model]
        per_model[a.model].append(a)
        node_assignments.setdefault(a.node, []).append(demands.node_assignment(im.spec, a))
    for node_name, kept in keep:
        node_assignments.setdefault(node_name, []).append(kept)
    for assignments in node_assignments.values():
        assignments.sort(key=lambda a: (a.model, a.replica))
    unplaced: dict[str, list[placement.Unplaced]] = defaultdict(list)
    for u in plan.unplaced:
        unplaced[u.model].append(u)
    observed = _observed_by_replica(nodes)
    serving = {(a.model, a.replica): observed.get((a.model, a.replica, n)) for n, a in keep}

    statuses: dict[str, imapi.InferenceModelStatus] = {}
    events: list[Event] = []
    for key, im in by_key.items():
        status = _model_status(
            im, sorted(per_model[key], key=lambda a: a.replica), unplaced[key], observed, now,
            serving,
        )  # fmt: skip
        statuses[key] = status
        events.extend(_events(im, status))
    return Desired(node_assignments=node_assignments, model_status=statuses, events=events)


def _observed_by_replica(
    nodes: Sequence[api.GPUNode],
) -> dict[tuple[str, int, str], gn.ResidentModel]:
    out = {}
    for node in nodes:
        if node.status is None:
            continue
        for m in node.status.models:
            out[(m.model, m.replica, node.metadata.name)] = m
    return out


def _model_status(
    im: api.InferenceModel,
    assigned: list[placement.Assignment],
    unplaced: list[placement.Unplaced],
    observed: dict[tuple[str, int, str], gn.ResidentModel],
    now: str,
    serving: dict[tuple[str, int], gn.ResidentModel | None] | None = None,
) -> imapi.InferenceModelStatus:
    key = inventory.model_key(im)
    gen = im.metadata.generation
    prev = im.status.conditions if im.status is not None else []
    seen = [observed.get((key, a.replica, a.node)) for a in assigned]
    placements = [
        imapi.ReplicaPlacement(
            replica=a.replica,
            node=a.node,
            gpu=a.gpu,
            state=s.state if s is not None else "Assigned",
            batch_size=a.batch_size,
            duty_cycle_ms=a.duty_cycle_ms,
        )
        for a, s in zip(assigned, seen, strict=True)
    ]
    old = serving or {}
    serving_now = (
        s if s is not None and s.state == "Ready" else old.get((key, a.replica))
        for a, s in zip(assigned, seen, strict=True)
    )
    ready = [s for s in serving_now if s is not None and s.state == "Ready"]
    want = im.spec.replicas

    if unplaced:
        first = unplaced[0]
        placed_cond = _condition(
            prev,
            "Placed",
            api.ConditionStatus.FALSE,
            first.reason.value,
            f"{len(unplaced)} of {want} replicas unplaced: {first.message or first.reason.value}",
            gen,
            now,
        )
    else:
        placed_cond = _condition(
            prev,
            "Placed",
            api.ConditionStatus.TRUE,
            "AllReplicasPlaced",
            f"{len(assigned)} replicas on {_gpu_list(assigned)}",
            gen,
            now,
        )
    if want > 0 and len(ready) == want:
        ready_cond = _condition(
            prev, "Ready", api.ConditionStatus.TRUE, "AllReplicasReady", "", gen, now
        )
    else:
        ready_cond = _condition(
            prev,
            "Ready",
            api.ConditionStatus.FALSE,
            "ReplicasNotReady",
            f"{len(ready)} of {want} replicas ready",
            gen,
            now,
        )
    p99s = [s.p99_ms for s in ready if s.p99_ms is not None]
    batches = [s.batch_size for s in ready if s.batch_size is not None]
    observed_stats = (
        imapi.ObservedStats(
            qps=round(sum(s.qps for s in ready), 3),
            p99_ms=max(p99s) if p99s else None,
            batch_size=round(sum(batches) / len(batches), 3) if batches else None,
        )
        if ready
        else None
    )
    if observed_stats is None or observed_stats.p99_ms is None:
        slo_cond = _condition(
            prev, "SLOAttained", api.ConditionStatus.UNKNOWN, "NoObservations", "", gen, now
        )
    elif observed_stats.p99_ms <= im.spec.slo.latency_ms:
        slo_cond = _condition(
            prev,
            "SLOAttained",
            api.ConditionStatus.TRUE,
            "WithinSLO",
            f"p99 {observed_stats.p99_ms:g} ms <= {im.spec.slo.latency_ms:g} ms",
            gen,
            now,
        )
    else:
        slo_cond = _condition(
            prev,
            "SLOAttained",
            api.ConditionStatus.FALSE,
            "SLOViolated",
            f"p99 {observed_stats.p99_ms:g} ms > {im.spec.slo.latency_ms:g} ms",
            gen,
            now,
        )

    capacity = None
    if assigned:
        a = assigned[0]
        capacity = imapi.DerivedCapacity(
            per_replica_qps=round(im.spec.slo.target_qps / max(want, 1), 6),
            batch_size=a.batch_size,
            duty_cycle_ms=a.duty_cycle_ms,
            busy_ms=round(a.busy_ms, 6),
            gpu_share=round(a.busy_ms / a.duty_cycle_ms, 6),
            memory_mib=round(a.memory_mib, 6),
        )
    return imapi.InferenceModelStatus(
        observed_generation=gen,
        replicas=len(assigned),
        ready_replicas=len(ready),
        selector=f"{api.MODEL_LABEL}={im.metadata.name}",
        url=endpoints.url(*endpoints.ref(im))
        if endpoints.service_name_ok(im.metadata.name)
        else "",
        conditions=[placed_cond, ready_cond, slo_cond],
        capacity=capacity,
        placements=placements,
        unplaced=[
            imapi.UnplacedReplica(replica=u.replica, reason=u.reason.value, message=u.message)
            for u in sorted(unplaced, key=lambda u: u.replica)
        ],
        observed=observed_stats,
    )


def _gpu_list(assigned: list[placement.Assignment]) -> str:
    return ", ".join(sorted({f"{a.node}/gpu{a.gpu}" for a in assigned}))


def _events(im: api.InferenceModel, new: imapi.InferenceModelStatus) -> list[Event]:
    """Events for what changed between the stored status and the new one."""
    ns, name = im.metadata.namespace or "default", im.metadata.name
    old = im.status
    old_where = {(p.replica, p.node, p.gpu) for p in old.placements} if old else set()
    new_where = {(p.replica, p.node, p.gpu) for p in new.placements}
    events = []
    if new_where != old_where and new_where:
        where = ", ".join(f"{r}->{n}/gpu{g}" for r, n, g in sorted(new_where))
        events.append(Event(ns, name, "Normal", "Placed", f"replicas placed: {where}"))
    old_unplaced = {(u.replica, u.reason) for u in old.unplaced} if old else set()
    new_unplaced = {(u.replica, u.reason) for u in new.unplaced}
    if new_unplaced and new_unplaced != old_unplaced:
        first = new.unplaced[0]
        events.append(
            Event(
                ns,
                name,
                "Warning",
                "Unplaced",
                f"{len(new.unplaced)} replicas unplaced ({first.reason}): {first.message}",
            )
        )
    return events
