"""Online mode: place arrivals one at a time without moving anything, plus a bounded
defragmentation pass.

``place_arrivals(problem)`` keeps every replica of ``problem.current`` exactly where it is and
places only the replicas that have no GPU yet (priority first): what a scheduler does per
arrival (``place_models``: only the replicas of named models, into a slice of the fleet).
SLO replicas go by best fit (``bestfit``). Fixed demands (``ModelDemand.gpu_milli`` >
0: a GPU fraction, one whole GPU or a gang of whole GPUs) go by the policy the public
GPU-sharing benchmark measures as "ours stowplan" (``tracesim``, scored by ``fragscore``):
per node whose CPU/host memory and GPUs admit the replica, FGD's fragmentation decrease against
the task distribution (``workload``, by default the problem's fixed-demand replicas) as an
integer sigmoid, the fitting distinct free value on the node with the best score (ties to the
tightest GPU), ties between nodes to the tightest node, then to the node whose first GPU comes
first in ``problem.gpus`` (``FragChooser``).

Free milli of a GPU (what the fragmentation measure sees): 1,000 when empty; otherwise
floor(1,000 x its free time share at the duty-cycle level most generous to it among those its
residents allow), at most 999. With fixed demands only this is exactly 1,000 minus their milli;
on a GPU that also holds SLO replicas it is the largest fixed fraction that still fits there by
time, rounded down (never more than fits; those replicas' own share depends on the cycle level,
and this takes the level that leaves the most; GPU memory is checked by the fit test, not by the
measure); a gang's GPUs count 0. A GPU is a candidate only where the engine's own fit test
says the replica fits (type, selector, memory, time, one replica of a model per GPU; such a GPU
counts at least the replica's milli free), so plans stay valid whatever the measure says. A
node's class in the measure is the type of its first GPU; a task's admitted types are its
``gpu_type`` (node selectors are not part of the measure).

``defragment(problem, max_moves)`` then tries to empty the least loaded GPUs by moving at most
``max_moves`` replicas to GPUs that are already in use (best fit; pinned replicas never move;
nor do multi-GPU replicas), and returns the plan only with the moves that empty a GPU.
Callers: library users placing arrivals one at a time, tests
(``tests/placement/test_online_trace_consistency.py`` replays the trace through this and
``tracesim``). The operator re-plans with ``planner.plan``, which also keeps running replicas
where they are but may preempt; its InferenceModels have no fixed demands today. Pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

import numpy as np
import numpy.typing as npt

from stowplan.placement.bestfit import best_fit, best_loads, choose_gpu, decreasing_order
from stowplan.placement.capacity import EPS
from stowplan.placement.fragscore import (
    MILLI,
    FragModel,
    TaskKind,
    best_gpu_choice,
    node_tightness,
    rule_for,
)
from stowplan.placement.lns import gpu_loads
from stowplan.placement.models import (
    ModelDemand,
    Plan,
    Problem,
    Unplaced,
    UnplacedReason,
    count_moves,
)
from stowplan.placement.packindex import PackIndex, Replica
from stowplan.placement.packing import PackState
from stowplan.placement.planner import (
    lower_bound,
    split_placeable,
    unplaceable_reason,
    validate,
)

Workload = Sequence[ModelDemand | TaskKind]
_TOL = 1e-6


def task_kinds(workload: Workload) -> list[TaskKind]:
    """The task distribution of ``workload``: a fixed-demand model counts ``replicas`` times
    (its GPU type as the admitted type), a ``TaskKind`` once (one with no GPU counts in the
    total weight only, as a CPU-only pod does in FGD); SLO models are not part of it."""
    out: list[TaskKind] = []
    for w in workload:
        if isinstance(w, TaskKind):
            out.append(w)
        elif w.gpu_milli > 0:
            kind = TaskKind(w.cpu_milli, w.gpus_per_replica, w.gpu_milli, w.gpu_type)
            out.extend([kind] * w.replicas)
    return out


class FragChooser:
    """The GPU(s) of one fixed-demand replica by ``fragscore``'s rule (see the module
    docstring), for one PackIndex; ``choose`` reads the PackState it is given."""

    def __init__(self, index: PackIndex, workload: Workload) -> None:
        self.index = index
        nodes = index.nodes
        if nodes is not None:
            self.gpu_node = nodes.gpu_node
            n_nodes = len(nodes.names)
        else:  # the same numbering NodeIndex uses: nodes by first GPU
            names: dict[str, int] = {}
            self.gpu_node = np.asarray(
                [names.setdefault(g.node, len(names)) for g in index.gpus], dtype=np.intp
            )
            n_nodes = len(names)
        self.n_nodes = n_nodes
        order = np.argsort(self.gpu_node, kind="stable")
        bounds = np.searchsorted(self.gpu_node[order], np.arange(n_nodes + 1))
        self.node_gpus = [order[bounds[k] : bounds[k + 1]] for k in range(n_nodes)]
        first_type = [index.gpus[int(gs[0])].gpu_type for gs in self.node_gpus]
        types = sorted(set(first_type))  # a node's class: the type of its first GPU
        self.node_class = [types.index(t) for t in first_type]
        tasks = task_kinds(workload)
        self.frag = FragModel(tasks, types)
        self.rule = rule_for(tasks)
        self._all = np.arange(len(index.gpus), dtype=np.intp)

    def free_milli(self, state: PackState) -> npt.NDArray[np.int64]:
        """(gpus,) free milli per GPU as the fragmentation measure sees it."""
        slack = np.clip(np.floor(state.open_slack * MILLI + _TOL), 0, MILLI - 1)
        return np.where(state.count == 0, MILLI, slack).astype(np.int64)

    def choose(self, state: PackState, mi: int) -> tuple[int, ...] | None:
        """GPU indices for one replica of fixed-demand model ``mi``, or None if none fits."""
        index = self.index
        m = index.models[mi]
        milli, k = m.gpu_milli, m.gpus_per_replica
        ok = ~state.holds.row(mi)
        if index.restricted[mi]:
            ok &= index.elig_rows[index.elig_kind[mi]]
        if milli >= MILLI:
            ok &= state.count == 0
        if k == 1:
            ok &= np.isfinite(best_loads(state, mi, self._all))
        else:  # a gang: whole empty GPUs with room for its memory (``gang_fits``)
            ok &= index.min_mem[mi] <= index.cap_mib + EPS
        per_node = np.bincount(self.gpu_node[ok], minlength=self.n_nodes)
        room = per_node >= k
        nodes = index.nodes
        if nodes is not None and nodes.uses_node[mi]:
            cpu, mem = state.cpu_left, state.hmem_left
            room &= (cpu >= m.cpu_milli - _TOL) & (mem >= m.host_memory_mib - _TOL)
            cpu_left = cpu.tolist()
        else:
            cpu_left = state.cpu_left if nodes is not None else np.full(self.n_nodes, np.inf)
            cpu_left = cpu_left.tolist()
        cand = np.flatnonzero(room).tolist()
        if not cand:
            return None
        free = self.free_milli(state)
        free[ok] = np.maximum(free[ok], milli)  # where the fit test says yes, it fits (floor)
        scale = self.rule.scale(milli)
        w_cpu = self.rule.cpu_weight(k, milli)
        seen: dict[tuple[object, ...], tuple[float, list[int]]] = {}
        best: tuple[float, float, int] | None = None  # (-score, tightness, node)
        best_value = 0
        for i in cand:
            gs = self.node_gpus[i]
            left = free[gs].tolist()
            fits = ok[gs].tolist()
            fit_values = sorted({v for v, f in zip(left, fits, strict=True) if f})
            cpu_i = cpu_left[i]
            cpu_key = int(cpu_i) if cpu_i != np.inf else cpu_i
            key = (self.node_class[i], cpu_key, *sorted(left), -1, *fit_values)
            hit = seen.get(key)
            if hit is None:
                if milli < MILLI:  # each distinct fitting free value, at its first GPU
                    firsts = {}
                    for g, (v, f) in enumerate(zip(left, fits, strict=True)):
                        if f and v not in firsts:
                            firsts[v] = g
                    choices = [[g] for g in firsts.values()]
                else:
                    choices = [[g for g, f in enumerate(fits) if f][:k]]
                hit = seen[key] = best_gpu_choice(
                    self.frag,
                    self.node_class[i],
                    cpu_key,
                    m.cpu_milli,
                    left,
                    choices,
                    milli,
                    scale,
                    self.rule.gpu_tiebreak,
                )
            tight = node_tightness(sum(left), milli * k, cpu_i, m.cpu_milli, w_cpu)
            rank = (-hit[0], tight, i)
            if best is None or rank < best:
                best, best_value = rank, hit[1][0]
        assert best is not None
        gs = self.node_gpus[best[2]]
        if milli < MILLI:
            pick = [int(g) for g in gs if ok[g] and free[g] == best_value][:1]
        else:
            pick = [int(g) for g in gs if ok[g]][:k]
        return tuple(pick)


def place_replicas(
    state: PackState, replicas: Sequence[Replica], workload: Workload | None = None
) -> list[Replica]:
    """Place ``replicas`` in the given order without moving anything; returns those that fit
    nowhere. Fixed-demand replicas go by ``FragChooser`` (task distribution ``workload``, by
    default the problem's fixed-demand models weighted by replicas), SLO replicas by best
    fit (``bestfit.best_fit``, in runs, so an SLO-only problem takes exactly its path)."""
    index = state.index
    fixed = [m.gpu_milli > 0 for m in index.models]
    if not any(fixed[mi] for mi, _ in replicas):
        return best_fit(state, replicas)
    chooser = FragChooser(index, index.problem.models if workload is None else workload)
    left: list[Replica] = []
    run: list[Replica] = []
    for rep in replicas:
        if not fixed[rep[0]]:
            run.append(rep)
            continue
        if run:
            left += best_fit(state, run)
            run = []
        gs = chooser.choose(state, rep[0])
        if gs is None:
            left.append(rep)
        else:
            state.place(rep, gs)
    if run:
        left += best_fit(state, run)
    return left


def _state_from_current(index: PackIndex, problem: Problem, use_kernel: bool = True) -> PackState:
    state = PackState(index, use_kernel=use_kernel)
    for a in problem.current:
        mi = index.model_pos.get(a.model)
        if mi is None or a.replica >= index.models[mi].replicas:
            continue
        gs = state.current_gpus(mi, a)
        if gs is not None:
            state.place((mi, a.replica), gs)
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


def place_arrivals(
    problem: Problem,
    *,
    workload: Workload | None = None,
    clock: Callable[[], float] = time.monotonic,
    use_kernel: bool = True,
) -> Plan:
    """Place the replicas without a GPU (priority first; see ``place_replicas``); never moves
    a running replica. ``workload``: the task distribution the fragmentation measure expects
    (fixed-demand models, each counted ``replicas`` times, or ``TaskKind``s); default: the
    problem's fixed-demand models."""
    start = clock()
    validate(problem)
    index = PackIndex.build(problem)
    placeable, unplaced = split_placeable(index)
    state = _state_from_current(index, problem, use_kernel)
    todo = [(mi, r) for mi in placeable for r in range(index.models[mi].replicas)]
    order = decreasing_order(index, [t for t in todo if t not in state.where])
    left = place_replicas(state, order, workload)
    return _finish(index, problem, state, left, unplaced, placeable, start, clock)


def place_models(
    problem: Problem,
    names: Collection[str],
    *,
    clock: Callable[[], float] = time.monotonic,
    use_kernel: bool = True,
) -> Plan:
    """Place the replicas of the models in ``names`` that have no GPU yet into
    ``problem.current`` without moving anything (``place_replicas``, priority first). Unlike
    ``place_arrivals``, replicas of the other models that ``current`` leaves out are not
    placed and not reported (neither assigned nor unplaced): ``problem`` may be a slice of a
    larger fleet (a few GPUs with what runs on them) and the caller keeps the rest. The plan's
    assignments are ``current`` plus the new ones; its unplaced replicas are those of ``names``
    only."""
    start = clock()
    validate(problem)
    wanted = set(names)
    index = PackIndex.build(problem)
    placeable, unplaced = split_placeable(index)
    unplaced = [u for u in unplaced if u.model in wanted]
    state = _state_from_current(index, problem, use_kernel)
    todo = [
        (mi, r)
        for mi in placeable
        if index.models[mi].name in wanted
        for r in range(index.models[mi].replicas)
    ]
    order = decreasing_order(index, [t for t in todo if t not in state.where])
    left = place_replicas(state, order)
    return _finish(index, problem, state, left, unplaced, placeable, start, clock)


def defragment(
    problem: Problem,
    max_moves: int,
    *,
    workload: Workload | None = None,
    clock: Callable[[], float] = time.monotonic,
    use_kernel: bool = True,
) -> Plan:
    """Online placement, then empty the least loaded GPUs with at most ``max_moves`` moves
    (best fit), then place what still waits (``place_replicas``)."""
    start = clock()
    base = place_arrivals(problem, workload=workload, clock=clock, use_kernel=use_kernel)
    moved_problem = problem.model_copy(update={"current": base.assignments})
    index = PackIndex.build(moved_problem)
    state = _state_from_current(index, moved_problem, use_kernel)
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
    left = place_replicas(state, decreasing_order(index, left), workload)  # freed room
    return _finish(index, problem, state, left, others, placeable, start, clock)
