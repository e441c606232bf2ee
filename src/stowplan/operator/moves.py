"""Make before break: which old copies of moved replicas stay assigned this pass (pure).

Callers: :mod:`stowplan.operator.fleet`, between planning and :func:`.reconcile.desired_state`.
A replica the plan moves to another node is added there at once; its old copy stays in the old
GPUNode's ``spec.assignments`` (and keeps serving) until the agent on the new node reports the
new copy ``Ready`` in ``GPUNode.status.models``, or until ``timeout_s`` has passed since the
move started (then it is removed anyway and the caller posts an event). So a model's Ready
count does not drop during a move. No copy is kept when waiting cannot help: the old node is
dead (stale heartbeat, cordoned, deleted: not in ``live``), the old copy is not Ready itself,
the replica stays on the same node (the agent serves one copy of a replica per node, so a GPU
change there is a switch), or the plan no longer places the replica (scaled down, deleted, or
evicted for capacity: the Unplaced event says so). :mod:`.inventory` counts a replica listed
twice once and holds its old copy's memory, so nothing is planned into memory still in use.
Nothing here does I/O or reads a clock: ``now_s`` and the start times are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from stowplan import api, placement
from stowplan.api import gpunode as gn

#: (model, replica, target node, target GPU): one move in flight
MoveKey = tuple[str, int, str, int]


@dataclass(frozen=True)
class Moves:
    #: old copies left in place this pass, as (GPUNode name, assignment)
    keep: list[tuple[str, gn.Assignment]] = field(default_factory=list)
    #: when each move still in flight started (monotonic seconds), for the next pass
    started_s: dict[MoveKey, float] = field(default_factory=dict)
    #: moves whose old copy is removed although the new one is not Ready: (move, old node)
    timed_out: list[tuple[MoveKey, str]] = field(default_factory=list)


def ready_copies(nodes: Iterable[api.GPUNode]) -> set[tuple[str, int, str, int]]:
    """(model, replica, node, GPU) of every copy an agent reports Ready."""
    return {
        (m.model, m.replica, node.metadata.name, m.gpu)
        for node in nodes
        if node.status is not None
        for m in node.status.models
        if m.state == "Ready"
    }


def make_before_break(
    nodes: Iterable[api.GPUNode],
    plan: placement.Plan,
    *,
    live: set[str],
    started_s: Mapping[MoveKey, float],
    now_s: float,
    timeout_s: float,
) -> Moves:
    node_list = sorted(nodes, key=lambda n: n.metadata.name)
    target = {(a.model, a.replica): (a.node, a.gpu) for a in plan.assignments}
    ready = ready_copies(node_list)
    out = Moves()
    for node in node_list:
        name = node.metadata.name
        for a in node.spec.assignments:
            where = target.get((a.model, a.replica))
            if where is None or where[0] == name or name not in live:
                continue
            if (a.model, a.replica, name, a.gpu) not in ready:
                continue  # the old copy serves nothing: nothing to keep
            move: MoveKey = (a.model, a.replica, *where)
            if (*move[:2], *where) in ready:
                continue  # the new copy serves: break the old one
            since = started_s.get(move, now_s)
            if now_s - since > timeout_s:
                out.timed_out.append((move, name))
                continue
            out.keep.append((name, a))
            out.started_s[move] = since
    return out
