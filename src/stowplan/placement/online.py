"""Online mode: place arrivals one at a time without moving anything, plus a bounded
defragmentation pass.

``place_arrivals(problem)`` keeps every replica of ``problem.current`` exactly where it is and
places only the replicas that have no GPU yet (best fit, priority first): what a scheduler does
per arrival. ``defragment(problem, max_moves)`` then tries to empty the least loaded GPUs by
moving at most ``max_moves`` replicas to GPUs that are already in use (pinned replicas never
move; nor do multi-GPU replicas), and returns the plan only with the moves that empty a GPU.
Node CPU/host memory and multi-GPU replicas are honoured through the node-aware best-fit.
Callers: the operator (a new InferenceModel or a scale-up), ``stowplan.placement.tracesim``
follows the same rules on the public trace. Pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from stowplan.placement.bestfit import best_fit, choose_gpu, decreasing_order
from stowplan.placement.lns import gpu_loads
from stowplan.placement.models import Plan, Problem, Unplaced, UnplacedReason, count_moves
from stowplan.placement.nodestate import current_gpus, place
from stowplan.placement.packing import PackIndex, PackState, Replica
from stowplan.placement.planner import (
    lower_bound,
    split_placeable,
    unplaceable_reason,
    validate,
)


def _state_from_current(index: PackIndex, problem: Problem) -> PackState:
    state = PackState(index)
    for a in problem.current:
        mi = index.model_pos.get(a.model)
        if mi is None or a.replica >= index.models[mi].replicas:
            continue
        gs = current_gpus(state, mi, a)
        if gs is not None:
            place(state, (mi, a.replica), gs)
    return state


def _finish(
    index: PackIndex,
    problem: Problem,
    state: PackState,
    left: list[Replica],
    unplaced: list[Unplaced],
    placeable: list[int],
    start: float,
    clock: Callable[[], float],
) -> Plan:
    unplaced = unplaced + [
        Unplaced(
            model=index.models[mi].name,
            replica=r,
            reason=UnplacedReason.NO_CAPACITY,
            message="no GPU has room left without moving running replicas",
        )
        for mi, r in sorted(left)
    ]
    assignments = state.assignments()
    moves = count_moves(problem.current, assignments)
    return Plan(
        assignments=tuple(assignments),
        unplaced=tuple(sorted(unplaced, key=lambda u: (u.model, u.replica))),
        gpus_used=state.used(),
        lower_bound=lower_bound(index, placeable),
        solve_seconds=max(0.0, clock() - start),
        moves=moves,
    )


def place_arrivals(problem: Problem, *, clock: Callable[[], float] = time.monotonic) -> Plan:
    """Place the replicas without a GPU; never moves a running replica."""
    start = clock()
    validate(problem)
    index = PackIndex.build(problem)
    placeable, unplaced = split_placeable(index)
    state = _state_from_current(index, problem)
    todo = [(mi, r) for mi in placeable for r in range(index.models[mi].replicas)]
    left = best_fit(state, decreasing_order(index, [t for t in todo if t not in state.where]))
    return _finish(index, problem, state, left, unplaced, placeable, start, clock)


def defragment(
    problem: Problem, max_moves: int, *, clock: Callable[[], float] = time.monotonic
) -> Plan:
    """Online placement, then empty the least loaded GPUs with at most ``max_moves`` moves."""
    start = clock()
    base = place_arrivals(problem, clock=clock)
    moved_problem = problem.model_copy(update={"current": base.assignments})
    index = PackIndex.build(moved_problem)
    state = _state_from_current(index, moved_problem)
    pinned = {(index.model_pos[n], r) for n, r in problem.pinned if n in index.model_pos}
    budget = max_moves
    loads = gpu_loads(state)
    for g in sorted(np.flatnonzero(state.count > 0).tolist(), key=lambda g: loads[g]):
        reps = sorted(state.residents[g])
        if not reps or len(reps) > budget or any(r in pinned or r in state.gangs for r in reps):
            continue  # pinned and multi-GPU replicas stay where they are
        trial = state.copy()
        for rep in reps:
            trial.remove(rep)
        # the emptied GPU must stay empty: pretend it holds every model while re-homing
        trial.holds[:, g] = True
        homes = []
        for rep in reps:
            dest = choose_gpu(trial, rep[0])
            if dest is None or trial.count[dest] == 0:
                break
            trial.add(rep, dest)
            homes.append(dest)
        if len(homes) == len(reps):
            trial.holds[:, g] = False
            state = trial
            budget -= len(reps)
        if budget <= 0:
            break
    placeable = [mi for mi in range(len(index.models)) if unplaceable_reason(index, mi) is None]
    left = [
        (index.model_pos[u.model], u.replica)
        for u in base.unplaced
        if u.reason == UnplacedReason.NO_CAPACITY
    ]
    others = [u for u in base.unplaced if u.reason != UnplacedReason.NO_CAPACITY]
    left = best_fit(state, decreasing_order(index, left))  # freed room may take waiting ones
    return _finish(index, problem, state, left, others, placeable, start, clock)
