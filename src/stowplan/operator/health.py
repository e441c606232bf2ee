"""Which GPUNodes may host replicas, and what the operator says about those that may not (pure).

Callers: :mod:`stowplan.operator.fleet`, each pass. A GPUNode offers no GPUs (its replicas are
re-placed elsewhere, and make before break does not wait for it) when

- its agent stopped heartbeating for longer than ``nodes.stale_after_s`` (the check itself is
  :func:`.inventory.is_stale`); the operator then sets the GPUNode's ``Ready`` condition to
  False with reason ``HeartbeatStale`` (:func:`stale_condition`). The agent's next status
  write replaces it when it comes back;
- its Kubernetes Node is cordoned (``spec.unschedulable``): ``NodeCordoned``;
- its Kubernetes Node was seen by this operator and is gone: ``NodeDeleted``. A GPUNode whose
  Node this process never saw (registered by hand, or the operator restarted after the Node
  went) is judged by its heartbeat alone.

:func:`next_stale_in_s` tells the loop when the next live node turns stale, so that it wakes
then instead of at the next resync. No I/O; the time is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from stowplan import api

STALE = "HeartbeatStale"
CORDONED = "NodeCordoned"
DELETED = "NodeDeleted"


def heartbeat_age_s(node: api.GPUNode, now: datetime) -> float | None:
    if node.status is None or node.status.heartbeat is None:
        return None
    beat = datetime.fromisoformat(node.status.heartbeat.replace("Z", "+00:00"))
    return (now - beat).total_seconds()


@dataclass(frozen=True)
class Availability:
    #: GPUNode name -> why it offers nothing (CORDONED or DELETED); stale nodes are separate
    unavailable: dict[str, str]
    #: the Kubernetes Nodes seen so far (this pass's and before), for the next pass
    seen: frozenset[str]


def availability(
    gpunodes: Iterable[str], k8s_nodes: Mapping[str, bool], seen_before: frozenset[str]
) -> Availability:
    """``k8s_nodes``: Node name -> cordoned, as listed this pass."""
    out = {}
    for name in gpunodes:
        if k8s_nodes.get(name):
            out[name] = CORDONED
        elif name not in k8s_nodes and name in seen_before:
            out[name] = DELETED
    return Availability(out, seen_before | frozenset(k8s_nodes))


def stale_condition(
    node: api.GPUNode, now: datetime, stale_after_s: float, now_rfc3339: str
) -> api.Condition | None:
    """The Ready=False condition to write on a stale node, or None (not stale, or already
    marked so)."""
    age = heartbeat_age_s(node, now)
    if age is None or age <= stale_after_s:
        return None
    ready = next((c for c in node.status.conditions if c.type == "Ready"), None)  # type: ignore[union-attr]
    if ready is not None and ready.status == api.ConditionStatus.FALSE and ready.reason == STALE:
        return None
    return api.Condition(
        type="Ready",
        status=api.ConditionStatus.FALSE,
        reason=STALE,
        message=f"no agent heartbeat for {age:.0f} s (staleAfter {stale_after_s:g} s); "
        "its replicas are re-placed",
        last_transition_time=now_rfc3339,
    )


def next_stale_in_s(
    nodes: Iterable[api.GPUNode], now: datetime, stale_after_s: float
) -> float | None:
    """Seconds until the first node that is live now turns stale (None: no heartbeats)."""
    ages = [a for a in (heartbeat_age_s(n, now) for n in nodes) if a is not None]
    left = [stale_after_s - a for a in ages if a <= stale_after_s]
    return min(left) if left else None
