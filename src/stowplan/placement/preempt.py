"""Preemption: when capacity is short, evict lower-priority replicas for higher-priority ones.

``preempt(state, left, pinned)`` takes the replicas best-fit could not place (``left``, in
placement order) and, for each, looks for room it may take from replicas of strictly lower
priority that are not pinned:

- a one-GPU replica takes one eligible GPU, evicting its lower-priority residents (lowest
  priority first, single-GPU ones before multi-GPU ones, larger first) until it fits;
- a multi-GPU replica ("gang") takes ``k`` eligible GPUs of one node: on every node, the GPUs
  whose residents all have lower priority and are not pinned are ranked by what emptying them
  costs (the replicas evicted, weighted by their priority), and the node where the ``k``
  cheapest cost least wins, provided the node's CPU and host memory then fit the gang.

Evicted replicas are re-placed by best fit where room is left; those that find none join the
unplaced (``NoCapacity``). A higher-priority replica never gets evicted for a lower one, and a
failed attempt restores the state exactly. Callers: ``planner.plan``. Mutates only the
PackState given; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stowplan.placement.bestfit import choose
from stowplan.placement.capacity import EPS
from stowplan.placement.packindex import Replica
from stowplan.placement.packing import PackState


def preempt(state: PackState, left: list[Replica], pinned: set[Replica]) -> list[Replica]:
    """Evict lower-priority replicas so that higher-priority ones in ``left`` get a GPU;
    returns the replicas still without one (including evicted ones that found no new home)."""
    index = state.index
    nodes = index.nodes
    still: list[Replica] = []
    for rep in left:
        if nodes is not None and nodes.gang[rep[0]] > 1:
            evicted = _for_gang(state, rep, pinned)
        else:
            evicted = _for_one(state, rep, pinned)
        if evicted is None:
            still.append(rep)
            continue
        for v in sorted(evicted, key=lambda v: -index.models[v[0]].priority):
            gs = choose(state, v[0])
            if gs is None:
                still.append(v)
            else:
                state.place(v, gs)
    return still


def _evictable(state: PackState, g: int, mi: int, pinned: set[Replica]) -> list[Replica] | None:
    """The residents of GPU ``g`` in eviction order if all may make way for model ``mi``
    (lower priority, not pinned), else None."""
    index = state.index
    prio = index.models[mi].priority
    residents = state.residents[g]
    if any(index.models[v[0]].priority >= prio or v in pinned for v in residents):
        return None
    return _in_eviction_order(state, residents)


def _in_eviction_order(state: PackState, victims: Iterable[Replica]) -> list[Replica]:
    """Lowest priority first, one-GPU replicas before gangs, larger first."""
    index = state.index
    return sorted(
        victims,
        key=lambda v: (index.models[v[0]].priority, v in state.gangs, -index.size(v[0]), v),
    )


def _for_one(state: PackState, rep: Replica, pinned: set[Replica]) -> list[Replica] | None:
    """Place a one-GPU replica by evicting lower-priority residents of one GPU; returns the
    evicted replicas (to re-place) or None (state unchanged)."""
    index = state.index
    mi = rep[0]
    prio = index.models[mi].priority
    cand = np.flatnonzero(index.elig_rows[index.elig_kind[mi]] & ~state.holds.row(mi))
    for g in cand.tolist():
        victims = _in_eviction_order(
            state,
            (
                v
                for v in state.residents[g]
                if index.models[v[0]].priority < prio and v not in pinned
            ),
        )
        if not victims:
            continue
        removed: list[tuple[Replica, tuple[int, ...]]] = []
        for v in victims:
            removed.append((v, state.gangs.get(v, (state.where[v],))))
            state.remove(v)
            if state.fits(mi, g):
                break
        if state.fits(mi, g):
            state.add(rep, g)
            return [v for v, _ in removed]
        for v, gs in reversed(removed):
            state.place(v, gs)
    return None


def _for_gang(state: PackState, rep: Replica, pinned: set[Replica]) -> list[Replica] | None:
    """Place a multi-GPU replica on the node where emptying ``k`` GPUs evicts the least;
    returns the evicted replicas or None (state unchanged)."""
    index = state.index
    nodes = index.nodes
    assert nodes is not None
    mi = rep[0]
    k = int(nodes.gang[mi])
    ok = index.elig_rows[index.elig_kind[mi]] & ~state.holds.every
    ok &= index.min_mem[mi] <= index.cap_mib + EPS
    best: tuple[tuple[float, int, int], int, list[int]] | None = None
    for node in np.unique(nodes.gpu_node[ok]).tolist():
        costed = []
        for g in np.flatnonzero(ok & (nodes.gpu_node == node)).tolist():
            victims = _evictable(state, g, mi, pinned)
            if victims is None:
                continue
            cost = sum(1.0 + max(0, index.models[v[0]].priority + 1000) / 2001 for v in victims)
            costed.append((cost, g))
        if len(costed) < k:
            continue
        costed.sort()
        chosen = costed[:k]
        key = (sum(c for c, _ in chosen), node, 0)
        if best is None or key < best[0]:
            best = (key, node, [g for _, g in chosen])
    if best is None:
        return None
    gpus = tuple(sorted(best[2]))
    removed: list[tuple[Replica, tuple[int, ...]]] = []
    for g in gpus:
        for v in _evictable(state, g, mi, pinned) or []:
            if v in state.where:  # a multi-GPU victim leaves all its GPUs at once
                removed.append((v, state.gangs.get(v, (state.where[v],))))
                state.remove(v)
    if state.gang_fits(mi, gpus):
        state.place(rep, gpus)
        return [v for v, _ in removed]
    for v, gs in reversed(removed):  # the node's CPU or host memory still does not fit
        state.place(v, gs)
    return None
