"""PackState operations for fixed node demands: multi-GPU replicas ("gangs") and keeping a
running placement.

A gang replica sits on every one of its GPUs (``PackState.add`` per GPU) with every duty-cycle
level forbidden there, so no other replica fits beside it, and its node's CPU and host memory
are taken once. ``current_gpus`` says whether a running assignment (one GPU or a gang) can be
kept as it is. Callers: bestfit (``place``), planner and online (``current_gpus``, ``place``),
packing (``remove_gang`` from ``PackState.remove``). Mutates only the PackState given; no I/O.
"""

from __future__ import annotations

import numpy as np

from stowplan.placement.capacity import EPS
from stowplan.placement.models import Assignment
from stowplan.placement.packing import BUSYX, NL, PackState, Replica


def add_gang(state: PackState, rep: Replica, gpus: tuple[int, ...]) -> None:
    """Place a multi-GPU replica on ``gpus`` (one node, all empty): each is full after (every
    level forbidden); its node CPU and memory are taken once."""
    mi = rep[0]
    for g in gpus:
        state.add(rep, g)
        row = state.rows[g]
        row[2 * NL : BUSYX] += 1.0
        row[BUSYX:] = np.inf
        state.open_slack[g] = -np.inf
    nodes = state.index.nodes
    assert nodes is not None
    if nodes.uses_node[mi]:  # ``add`` took it once per GPU
        state.node_take(mi, gpus[0], 1.0 - len(gpus))
    state.where[rep] = gpus[0]
    state.gangs[rep] = gpus


def remove_gang(state: PackState, rep: Replica) -> int:
    """Undo ``add_gang``; returns the first GPU (what ``PackState.remove`` returns)."""
    mi = rep[0]
    gpus = state.gangs.pop(rep)
    nodes = state.index.nodes
    assert nodes is not None
    if nodes.uses_node[mi]:  # ``remove`` gives it back once per GPU
        state.node_take(mi, gpus[0], len(gpus) - 1.0)
    for g in gpus:
        state.rows[g, 2 * NL : BUSYX] -= 1.0
        state.where[rep] = g
        state.remove(rep)
    return gpus[0]


def place(state: PackState, rep: Replica, gpus: tuple[int, ...]) -> None:
    """``PackState.add`` for one GPU, ``add_gang`` for several."""
    if len(gpus) == 1:
        state.add(rep, gpus[0])
    else:
        add_gang(state, rep, gpus)


def gang_fits(state: PackState, mi: int, gpus: tuple[int, ...]) -> bool:
    """Whether a multi-GPU replica of ``mi`` may take exactly ``gpus`` now: as many as it
    needs, distinct, empty, on one node with its CPU/memory, eligible, not reserved."""
    index = state.index
    nodes = index.nodes
    if nodes is None or len(gpus) != nodes.gang[mi] or len(set(gpus)) != len(gpus):
        return False
    ids = np.asarray(gpus, dtype=np.intp)
    node = nodes.gpu_node[ids]
    if (node != node[0]).any() or not nodes.room(mi, state.cpu_left, state.hmem_left, node)[0]:
        return False
    return bool(
        (state.count[ids] == 0).all()
        and index.elig_rows[index.elig_kind[mi], ids].all()
        and not state.holds.closed(mi, ids).any()
        and (index.min_mem[mi] <= index.cap_mib[ids] + EPS).all()
    )


def current_gpus(state: PackState, mi: int, a: Assignment) -> tuple[int, ...] | None:
    """The GPU indices of assignment ``a`` if a replica of ``mi`` may be added there now
    (eligible, not reserved, fits; a multi-GPU replica: exactly its GPUs), else None."""
    index = state.index
    if a.extra_gpus or (index.nodes is not None and index.nodes.gang[mi] > 1):
        gs = tuple(index.gpu_pos.get(k, -1) for k in a.gpu_keys)
        return gs if -1 not in gs and gang_fits(state, mi, gs) else None
    g = index.gpu_pos.get(a.gpu_key)
    if g is None or not index.is_eligible(mi, g) or state.holds.is_closed(mi, g):
        return None
    return (g,) if state.fits(mi, g) else None
