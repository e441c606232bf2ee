"""Which watch events are worth a fleet pass (pure).

Every status patch the operator writes, and every heartbeat an agent writes, comes back as a
watch event; at fleet scale a pass per such event keeps the loop busy re-planning an
unchanged fleet. :class:`Wakeups` remembers a fingerprint of what a pass reads from each object
(an InferenceModel's generation, labels and deletion; a GPUNode's spec, labels, GPUs, allocatable,
the state of each replica its agent reports and the agent's address, which the models'
EndpointSlices list) and says to wake only when it changed or the
object is gone. A stale heartbeat needs no event: the loop wakes when the next node turns stale
(:func:`.health.next_stale_in_s`). The operator's own writes of ``GPUNode.spec.assignments``
do not wake it either: :meth:`Wakeups.expect_assignments` records what a pass is about to
write (before the write: its echo may come in before the write's answer), and the event that
echoes it changes nothing (compared as parsed JSON, so ``8`` and ``8.0`` agree). A write that
then fails only costs a spurious wake-up, never a missed one.
Callers: :mod:`stowplan.operator.handlers` (and the fleet loop, through the callback it is given).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def model_fingerprint(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return json.dumps(
        [meta.get("generation"), meta.get("labels"), bool(meta.get("deletionTimestamp"))],
        sort_keys=True,
    )


def node_fingerprint(body: Mapping[str, Any]) -> str:
    """Everything a pass reads of a GPUNode but its spec (compared apart: :class:`Wakeups`)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    replicas = sorted(
        (m.get("model"), m.get("replica"), m.get("gpu"), m.get("state"))
        for m in status.get("models") or []
    )
    conditions = sorted((c.get("type"), c.get("status")) for c in status.get("conditions") or [])
    return json.dumps(
        [meta.get("labels"), bool(meta.get("deletionTimestamp")),
         status.get("gpus"), status.get("allocatable"), replicas, conditions,
         status.get("endpoint")],
        sort_keys=True, default=str,
    )  # fmt: skip


class Wakeups:
    def __init__(self) -> None:
        #: (kind, namespace, name) -> (spec as parsed JSON (nodes; None for models), the rest)
        self._seen: dict[tuple[str, str, str], tuple[Any, str]] = {}

    def changed(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        key = (kind, meta.get("namespace") or "", meta.get("name") or "")
        if event_type == "DELETED":
            self._seen.pop(key, None)
            return True
        if kind == "model":
            print_: tuple[Any, str] = (None, model_fingerprint(body))
        else:
            print_ = (body.get("spec") or {}, node_fingerprint(body))
        if self._seen.get(key) == print_:
            return False
        self._seen[key] = print_
        return True

    def expect_assignments(self, node: str, assignments: list[dict[str, Any]]) -> None:
        """The operator is writing ``spec.assignments`` (wire form) of GPUNode ``node``: the
        watch event that brings it back is no change (a node not seen yet stays unseen)."""
        key = ("node", "", node)
        if key in self._seen:
            self._seen[key] = ({"assignments": assignments}, self._seen[key][1])
