"""Best-fit decreasing: the fallback plan, the CP-SAT/LNS starting point and the online policy.

For each replica (in the caller's order; ``decreasing_order`` gives priority, then size) pick,
among the GPUs it may use, the already used GPU whose load after adding it is the highest (the
tightest fit, at the best duty-cycle level for that GPU); open an empty GPU only when no used one
fits, again the tightest. Callers: planner, online, lns. Pure; mutates only the PackState given.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stowplan.placement.packing import PackIndex, PackState, Replica


def choose_gpu(state: PackState, mi: int) -> int | None:
    """The best-fit GPU for one replica of model ``mi``, or None if none fits."""
    index = state.index
    ok = index.eligible[mi] & ~state.holds[mi] & state.prefilter(mi)
    busy = state.count > 0
    for cand in (np.flatnonzero(ok & busy), _first_empty_per_class(state, ok & ~busy)):
        if cand.size == 0:
            continue
        load = state.loads(mi, cand).min(axis=1)
        idx = np.flatnonzero(np.isfinite(load))
        if idx.size:
            return int(cand[idx[np.argmax(load[idx])]])
    return None


def _first_empty_per_class(state: PackState, mask: np.ndarray) -> np.ndarray:
    """Empty GPUs are interchangeable within a class: try the first of each class only."""
    cand = np.flatnonzero(mask)
    if cand.size <= 1:
        return cand
    _, first = np.unique(state.index.gpu_class[cand], return_index=True)
    return cand[np.sort(first)]


def decreasing_order(
    index: PackIndex, replicas: Iterable[Replica], *, by_slo: bool = True
) -> list[Replica]:
    """Higher priority first; then (``by_slo``) the replicas whose SLO allows only short duty
    cycles, so that GPUs fill with replicas that agree on a cycle length (mixing a tight SLO
    into a GPU shortens everyone's cycle and inflates their share: 447 vs 459 GPUs on the
    1,000-replica benchmark instance); then larger (time or memory share) first; then names."""
    reps = list(replicas)
    mis = {r[0] for r in reps}
    sizes = {mi: index.size(mi) for mi in mis}
    top = {
        mi: int(np.flatnonzero(index.costs[mi].ok).max(initial=0)) if by_slo else 0 for mi in mis
    }
    return sorted(reps, key=lambda r: (-index.models[r[0]].priority, top[r[0]], -sizes[r[0]], r))


def best_fit(state: PackState, replicas: Iterable[Replica]) -> list[Replica]:
    """Place ``replicas`` in the given order; returns those that fit nowhere."""
    left: list[Replica] = []
    for rep in replicas:
        g = choose_gpu(state, rep[0])
        if g is None:
            left.append(rep)
        else:
            state.add(rep, g)
    return left
