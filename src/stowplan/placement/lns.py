"""Large-neighbourhood search: repack a few GPUs at a time (DESIGN §4).

Starting from the best-fit plan, repeatedly free a neighbourhood (a lightly loaded GPU plus a
few with a similar duty cycle) and rebuild it: mostly by ruin-and-recreate (best-fit
re-insertion with the seed GPU forbidden, kept when the lexicographic objective unplaced, GPUs,
moves, -sum(load^2) does not get worse, so GPUs drain towards empty), and every 25th step
exactly with ``cpsat.repack`` (hinted with the incoming assignment, kept only when strictly
better: fewer GPUs, more replicas placed, or fewer moves against ``problem.current``). So the
plan never gets worse than best-fit. GPUs that hold pinned replicas are never part of a
neighbourhood. Fixed node demands: GPUs held by a multi-GPU replica are never part of a
neighbourhood; an unplaced multi-GPU replica gets room by its own move (every fifth cheap
step while one waits: empty the least loaded eligible GPUs of a random node, put the gang
there, re-insert their replicas elsewhere; kept only when every one of them finds a GPU). Node
CPU/host memory limits hold because re-insertion uses the node-aware best-fit and
``cpsat.repack`` carries the node constraints. Callers: planner (``time_limit_s > 0``). Pure;
the clock is injected.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from stowplan.placement.bestfit import choose_gpu, decreasing_order
from stowplan.placement.capacity import EPS
from stowplan.placement.cpsat import GPU_WEIGHT, PLACE_WEIGHT, repack
from stowplan.placement.models import Problem
from stowplan.placement.packindex import LEVELS, PackIndex, Replica
from stowplan.placement.packing import PackState

MAX_STEP_S = 2.0  # CP-SAT budget of one neighbourhood
MAX_OPTIONAL = 12  # unplaced replicas offered to one neighbourhood


def gpu_loads(state: PackState) -> np.ndarray:
    """Load of every GPU at its best level (max of time and memory share); 0 when empty."""
    cap = state.index.cap_mib[:, None]
    ok = (state.blocked == 0) & (state.busy <= LEVELS * (1 + EPS)) & (state.mem <= cap + EPS)
    load = np.maximum(state.busy / LEVELS, state.mem / cap)
    load[~ok] = np.inf
    best = load.min(axis=1)
    best[state.count == 0] = 0.0
    return np.where(np.isfinite(best), best, 1.0)


def _score(state: PackState, left: list[Replica], current: dict[Replica, int]) -> tuple[float, ...]:
    """Lexicographic objective: unplaced, GPUs, moves, then fuller GPUs (-sum of load^2)."""
    moves = sum(1 for rep, g in current.items() if state.where.get(rep, g) != g)
    loads = gpu_loads(state)
    return (len(left), state.used(), moves, -float((loads**2).sum()))


def _place_each(state: PackState, reps: list[Replica], placed: list[Replica]) -> list[Replica]:
    """Best-fit each of ``reps`` in order, appending the placed ones to ``placed``; returns
    those that fit nowhere."""
    failed: list[Replica] = []
    for rep in reps:
        g = choose_gpu(state, rep[0])
        if g is None:
            failed.append(rep)
        else:
            state.add(rep, g)
            placed.append(rep)
    return failed


def _ruin_recreate(
    best: PackState,
    left: list[Replica],
    current: dict[Replica, int],
    frozen: set[int],
    rng: random.Random,
    size: int,
) -> tuple[list[Replica], bool]:
    """Empty a lightly loaded GPU and a few similar ones, re-insert their replicas by best fit
    (the seed GPU last), keep the change when the objective does not get worse."""
    index = best.index
    used = [g for g in np.flatnonzero(best.count > 0).tolist() if g not in frozen]
    if not used:
        return left, False
    before = _score(best, left, current)
    loads = gpu_loads(best)
    weights = (1.0 - loads[used] + 0.02) ** 4
    g0 = rng.choices(used, weights=weights.tolist())[0]
    lv0 = best.best_level(g0)
    pool = [g for g in used if g != g0 and abs(best.best_level(g) - lv0) <= 2] or [
        g for g in used if g != g0
    ]
    chosen = [g0, *rng.sample(pool, min(size, len(pool)))]
    log: list[tuple[Replica, int]] = []
    for g in chosen:
        for rep in list(best.residents[g]):
            best.remove(rep)
            log.append((rep, g))
    singles = _singles(index, left)
    extra = rng.sample(singles, min(4, len(singles)))
    todo = [rep for rep, _ in log] + extra
    order = decreasing_order(index, todo)
    if rng.random() < 0.5:  # perturb: swap a few neighbours in the order
        for _ in range(max(1, len(order) // 4)):
            i = rng.randrange(len(order))
            j = min(len(order) - 1, i + 1)
            order[i], order[j] = order[j], order[i]
    best.holds[:, g0] = True  # try to empty the seed GPU
    placed: list[Replica] = []
    failed = _place_each(best, order, placed)
    best.holds[:, g0] = False
    for mi, _ in best.residents[g0]:
        best.holds[mi, g0] = True
    still = _place_each(best, failed, placed)
    must = {rep for rep, _ in log}
    new_left = [rep for rep in left if rep not in best.where]
    if not (must & set(still)) and _score(best, new_left, current) <= before:
        return new_left, True
    for rep in placed:  # undo
        best.remove(rep)
    for rep, g in log:
        best.add(rep, g)
    return left, False


def _room_for_gang(
    best: PackState,
    left: list[Replica],
    current: dict[Replica, int],
    frozen: set[int],
    rng: random.Random,
) -> tuple[list[Replica], bool]:
    """Make room for an unplaced multi-GPU replica: on a random node with enough eligible
    GPUs, empty the least loaded ones of one-GPU replicas, put the gang there, and re-insert
    the evicted replicas by best fit elsewhere; kept only when all of them find a GPU (so
    nobody, whatever their priority, loses their place to the gang)."""
    index = best.index
    nodes = index.nodes
    assert nodes is not None
    gangs = [rep for rep in left if nodes.gang[rep[0]] > 1]
    rep = gangs[rng.randrange(len(gangs))]
    mi = rep[0]
    k = int(nodes.gang[mi])
    ok = index.elig_rows[index.elig_kind[mi]] & ~best.holds.row(mi)
    ok &= index.min_mem[mi] <= index.cap_mib + EPS
    if frozen:
        ok[list(frozen)] = False
    node_ids = np.unique(nodes.gpu_node[ok])
    node_ids = node_ids[np.bincount(nodes.gpu_node[ok], minlength=len(nodes.names))[node_ids] >= k]
    if node_ids.size == 0:
        return left, False
    node = int(node_ids[rng.randrange(node_ids.size)])
    loads = gpu_loads(best)
    on_node = [g for g in np.flatnonzero(ok & (nodes.gpu_node == node)).tolist()]
    gpus = tuple(sorted(sorted(on_node, key=lambda g: (loads[g], g))[:k]))
    before = _score(best, left, current)
    log = [(r, g) for g in gpus for r in list(best.residents[g])]
    for r, _ in log:
        best.remove(r)
    if not best.gang_fits(mi, gpus):
        for r, g in log:
            best.add(r, g)
        return left, False
    best.place(rep, gpus)
    placed: list[Replica] = []
    failed = _place_each(best, decreasing_order(index, [r for r, _ in log]), placed)
    new_left = [r for r in left if r != rep]
    if not failed and _score(best, new_left, current) <= before:
        return new_left, True
    for r in placed:  # undo
        best.remove(r)
    best.remove(rep)
    for r, g in log:
        best.add(r, g)
    return left, False


def _singles(index: PackIndex, reps: list[Replica]) -> list[Replica]:
    """The one-GPU replicas of ``reps`` (gangs are placed by best-fit only)."""
    if index.nodes is None or not index.nodes.has_gangs:
        return reps
    gang = index.nodes.gang
    return [rep for rep in reps if gang[rep[0]] == 1]


def _objective(
    assign: dict[Replica, int], current: dict[Replica, int], optional: list[Replica]
) -> int:
    moves = sum(1 for rep, g in current.items() if rep in assign and assign[rep] != g)
    placed = sum(1 for rep in optional if rep in assign)
    return GPU_WEIGHT * len(set(assign.values())) + moves - PLACE_WEIGHT * placed


def improve(
    state: PackState,
    left: list[Replica],
    problem: Problem,
    *,
    deadline: float,
    seed: int,
    clock: Callable[[], float],
) -> tuple[PackState, list[Replica]]:
    """Return ``(state, left)`` improved within the deadline; never worse than the input."""
    index = state.index
    rng = random.Random(seed)
    best = state.copy()
    left = list(left)
    current: dict[Replica, int] = {}
    for a in problem.current:
        mi, g = index.model_pos.get(a.model), index.gpu_pos.get(a.gpu_key)
        if mi is not None and g is not None and a.replica < index.models[mi].replicas:
            current[(mi, a.replica)] = g
    pinned = {(index.model_pos[name], r) for name, r in problem.pinned if name in index.model_pos}
    frozen = {best.where[rep] for rep in pinned if rep in best.where}
    for rep in pinned:  # a pinned gang freezes all its GPUs
        frozen.update(best.gangs.get(rep, ()))
    for gs in best.gangs.values():  # GPUs of multi-GPU replicas never join a neighbourhood
        frozen.update(gs)
    size = 12
    stale = 0
    step = 0
    while True:
        remaining = deadline - clock()
        if remaining < 0.05:
            break
        step += 1
        if step % 25 or remaining < 1.0:  # mostly cheap ruin-and-recreate steps
            if step % 5 == 0 and len(_singles(index, left)) < len(left):
                left, moved = _room_for_gang(best, left, current, frozen, rng)
                if moved:  # the gang's GPUs join the frozen ones
                    frozen.update(g for rep in best.gangs for g in best.gangs[rep])
                continue
            left, _ = _ruin_recreate(best, left, current, frozen, rng, rng.randint(1, 4))
            continue
        used = [g for g in np.flatnonzero(best.count > 0).tolist() if g not in frozen]
        if len(used) < 2 and not left:
            break
        loads = gpu_loads(best)
        # the seed GPU: lightly loaded ones first (they are the ones worth emptying)
        weights = np.asarray([1.0 - loads[g] + 0.05 for g in used]) ** 3
        g0 = rng.choices(used, weights=weights.tolist())[0] if used else None
        chosen = [g0] if g0 is not None else []
        pool = [g for g in used if g != g0]
        if pool and g0 is not None:
            # partners: GPUs whose duty cycle is close to g0's (mixing cycles is costly) and
            # that can host g0's models, lightly loaded first
            models0 = {mi for mi, _ in best.residents[g0]}
            lv0 = best.best_level(g0)
            compatible = [g for g in pool if all(index.eligible[mi, g] for mi in models0)] or pool
            compatible.sort(key=lambda g: (abs(best.best_level(g) - lv0), loads[g]))
            near = compatible[: max(3 * size, 12)]
            chosen += rng.sample(near, min(size - 1, len(near)))
        if _singles(index, left):  # an empty GPU of the right kind lets unplaced replicas in
            empties = np.flatnonzero(best.count == 0)
            if empties.size:
                chosen.append(int(empties[rng.randrange(empties.size)]))
        reps = [rep for g in chosen for rep in best.residents[g]]
        singles = _singles(index, left)
        optional = rng.sample(singles, min(MAX_OPTIONAL, len(singles)))
        old = {rep: best.where[rep] for rep in reps}
        cur = {rep: g for rep, g in current.items() if rep in old}
        res = repack(
            best,
            chosen,
            reps,
            cur,
            min(MAX_STEP_S, remaining - 0.02),
            rng.randrange(1 << 30),
            optional,
        )
        if res is not None and _objective(res, cur, optional) < _objective(old, cur, []):
            for rep in reps:
                best.remove(rep)
            for rep, g in res.items():
                best.add(rep, g)
            left = [rep for rep in left if rep not in res]
            stale = 0
        else:
            stale += 1
            if stale >= 4 and size < 24:
                size += 1
                stale = 0
    return best, left
