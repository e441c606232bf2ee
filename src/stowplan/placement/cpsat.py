"""CP-SAT models of the engine (with colgen, the only engine modules importing OR-Tools): LNS
repacking of a few GPUs and the lower bounds that need a solver.

``repack`` solves the DESIGN §3 discretised model on a neighbourhood: binary ``x[r, g]`` (replica
r on GPU g), ``lvl[g, l]`` (GPU g runs duty-cycle level l), ``used[g]``; per GPU and level the
integer busy-time (µs, rounded up) and memory (KiB, rounded up) sums fit when the level is chosen;
a replica may only sit on a GPU at a level its SLO allows; one replica of a model per GPU.
When the problem has node CPU/host-memory limits, the replicas placed on the neighbourhood's
GPUs of one node fit in what that node has left (the CPU and memory of the neighbourhood's own
replicas given back); multi-GPU replicas are never part of a neighbourhood (lns).
Objective: fewest GPUs, then fewest moves away from the current placement, with a hint from the
incoming plan. Callers: lns (repack), planner (bounds). No I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from ortools.graph.python import max_flow
from ortools.sat.python import cp_model

from stowplan.placement.errors import SolverFailed
from stowplan.placement.packindex import LEVELS, PackIndex, Replica
from stowplan.placement.packing import PackState

GPU_WEIGHT = 10_000  # one GPU saved is worth more than any number of moves in a neighbourhood
PLACE_WEIGHT = 1_000_000  # placing an unplaced replica beats anything else


def repack(
    state: PackState,
    gpus: Sequence[int],
    replicas: Sequence[Replica],
    current: Mapping[Replica, int],
    time_limit_s: float,
    seed: int,
    optional: Sequence[Replica] = (),
) -> dict[Replica, int] | None:
    """Best assignment of ``replicas`` (all must be placed) plus any of ``optional`` onto
    ``gpus``, or None when CP-SAT found nothing better than the hint within the limit."""
    index = state.index
    model = cp_model.CpModel()
    x: dict[tuple[Replica, int], cp_model.IntVar] = {}
    all_reps = list(replicas) + list(optional)
    for rep in all_reps:
        for g in gpus:
            if index.eligible[rep[0], g]:
                x[rep, g] = model.new_bool_var(f"x_{rep[0]}_{rep[1]}_{g}")
    used = {g: model.new_bool_var(f"used_{g}") for g in gpus}
    lvls: dict[int, list[cp_model.IntVar]] = {}
    n_lv = len(LEVELS)
    d_us = [math.floor(float(d) * 1000) for d in LEVELS]
    # Each replica must be in exactly one GPU of the neighbourhood (optional ones at most one).
    for rep in replicas:
        vars_ = [x[rep, g] for g in gpus if (rep, g) in x]
        if not vars_:
            return None
        model.add_exactly_one(vars_)
    for rep in optional:
        model.add_at_most_one(x[rep, g] for g in gpus if (rep, g) in x)
    by_model: dict[int, list[Replica]] = defaultdict(list)
    for rep in all_reps:
        by_model[rep[0]].append(rep)
    for g in gpus:
        cap_kib = math.floor(float(index.cap_mib[g]) * 1024)
        lvl = [model.new_bool_var(f"lvl_{g}_{li}") for li in range(n_lv)]
        lvls[g] = lvl
        # A used GPU runs exactly one duty-cycle level.
        model.add(sum(lvl) == used[g])
        here = [rep for rep in all_reps if (rep, g) in x]
        for rep in here:
            model.add_implication(x[rep, g], used[g])
        # One replica of a model per GPU.
        for reps in by_model.values():
            vs = [x[r, g] for r in reps if (r, g) in x]
            if len(vs) > 1:
                model.add_at_most_one(vs)
        for li in range(n_lv):
            ok_here = [rep for rep in here if index.costs[rep[0]].ok[li]]
            for rep in here:
                if not index.costs[rep[0]].ok[li]:
                    model.add_bool_or([x[rep, g].Not(), lvl[li].Not()])
            if not ok_here:
                model.add(lvl[li] == 0)
                continue
            busy = [math.ceil(float(index.costs[r[0]].busy_ms[li]) * 1000) for r in ok_here]
            mem = [math.ceil(float(index.costs[r[0]].memory_mib[li]) * 1024) for r in ok_here]
            # The cycle has room for every batch, and the memory fits, at the chosen level.
            model.add(
                sum(b * x[r, g] for b, r in zip(busy, ok_here, strict=True)) <= d_us[li]
            ).only_enforce_if(lvl[li])
            model.add(
                sum(m * x[r, g] for m, r in zip(mem, ok_here, strict=True)) <= cap_kib
            ).only_enforce_if(lvl[li])
        # Symmetry breaking is left to the hint: neighbourhoods are small and GPUs differ.
    _node_limits(model, state, gpus, replicas, all_reps, x)
    moves = [x[rep, g].Not() for rep, g in current.items() if (rep, g) in x]
    placed_opt = [x[rep, g] for rep in optional for g in gpus if (rep, g) in x]
    model.minimize(GPU_WEIGHT * sum(used.values()) + sum(moves) - PLACE_WEIGHT * sum(placed_opt))
    # A complete hint (the incoming plan) gives CP-SAT a first solution at once.
    for (rep, g), var in x.items():
        model.add_hint(var, int(state.where.get(rep) == g))
    for g in gpus:
        in_use = bool(state.count[g] > 0)
        model.add_hint(used[g], int(in_use))
        best = state.best_level(g) if in_use else -1
        for li, lvar in enumerate(lvls[g]):
            model.add_hint(lvar, int(li == best))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, time_limit_s)
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    status = solver.solve(model)
    if status == cp_model.MODEL_INVALID:
        raise SolverFailed(model.validate())
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    out: dict[Replica, int] = {}
    for (rep, g), var in x.items():
        if solver.boolean_value(var):
            out[rep] = g
    return out


def _node_limits(
    model: cp_model.CpModel,
    state: PackState,
    gpus: Sequence[int],
    replicas: Sequence[Replica],
    all_reps: Sequence[Replica],
    x: Mapping[tuple[Replica, int], cp_model.IntVar],
) -> None:
    """Per node touched by ``gpus``: CPU and host memory of the replicas put there fit in what
    the node has left once the neighbourhood's own replicas are taken off it."""
    nodes = state.index.nodes
    if nodes is None or not nodes.uses_node.any():
        return
    by_node: dict[int, list[int]] = defaultdict(list)
    for g in gpus:
        by_node[int(nodes.gpu_node[g])].append(g)
    for k, gs in by_node.items():
        for need, left in ((nodes.need_cpu, state.cpu_left), (nodes.need_mem, state.hmem_left)):
            if not math.isfinite(float(left[k])):
                continue
            back = sum(
                float(need[rep[0]])
                for rep in replicas
                if rep in state.where and int(nodes.gpu_node[state.where[rep]]) == k
            )
            terms = [
                (round(float(need[rep[0]])), x[rep, g])
                for rep in all_reps
                if need[rep[0]] > 0
                for g in gs
                if (rep, g) in x
            ]
            if terms:
                model.add(sum(c * v for c, v in terms) <= math.floor(float(left[k]) + back + 1e-6))


def fractional_matching(counts: Sequence[int], pairs: Sequence[tuple[int, int]]) -> float:
    """Max fractional b-matching (``counts`` per node, edges ``pairs``): an upper bound on the
    number of disjoint compatible pairs, = max flow on the bipartite double cover / 2."""
    n = len(counts)
    if not pairs:
        return 0.0
    flow = max_flow.SimpleMaxFlow()
    src, dst = 2 * n, 2 * n + 1
    for i, c in enumerate(counts):
        flow.add_arc_with_capacity(src, i, c)
        flow.add_arc_with_capacity(n + i, dst, c)
    big = max(counts)
    for i, j in pairs:
        flow.add_arc_with_capacity(i, n + j, big)
        flow.add_arc_with_capacity(j, n + i, big)
    if flow.solve(src, dst) != flow.OPTIMAL:
        raise SolverFailed("max flow failed on the matching bound")
    return float(flow.optimal_flow()) / 2.0


def level_bound(state_index: PackIndex, models: Sequence[int], time_limit_s: float = 5.0) -> int:
    """Lower bound on GPUs from the level-aggregated relaxation (valid for any plan).

    Every GPU runs one duty-cycle level. Aggregate the GPUs of level l into ``z[l]`` and let
    ``n[i, l]`` replicas of model i sit at level l (only levels its SLO allows). Then, per level:
    the time shares and memory fractions of its replicas sum to at most ``z[l]``, replicas whose
    share there exceeds one half need a GPU each, and one model puts at most one replica per GPU.
    Minimising sum z is a relaxation; CP-SAT's proven bound is returned (rounded up).
    """
    index = state_index
    scale = 10_000
    model = cp_model.CpModel()
    n_lv = len(LEVELS)
    total = sum(index.models[mi].replicas for mi in models)
    z = [model.new_int_var(0, total, f"z_{li}") for li in range(n_lv)]
    time_terms: list[list[tuple[int, cp_model.IntVar]]] = [[] for _ in range(n_lv)]
    mem_terms: list[list[tuple[int, cp_model.IntVar]]] = [[] for _ in range(n_lv)]
    big_terms: list[list[cp_model.IntVar]] = [[] for _ in range(n_lv)]
    for mi in models:
        c = index.costs[mi]
        reps = index.models[mi].replicas
        cap = float(index.cap_mib[index.eligible[mi]].max())
        vs = []
        for li in np.flatnonzero(c.ok).tolist():
            v = model.new_int_var(0, reps, f"n_{mi}_{li}")
            vs.append(v)
            share = float(c.busy_ms[li]) / float(LEVELS[li])
            time_terms[li].append((math.ceil(share * scale - 1e-6), v))
            mem_terms[li].append((math.ceil(float(c.memory_mib[li]) / cap * scale - 1e-6), v))
            if share > 0.5 + 1e-9:
                big_terms[li].append(v)
            model.add(v <= z[li])  # one replica of a model per GPU
        model.add(sum(vs) == reps)
    for li in range(n_lv):
        if time_terms[li]:
            model.add(sum(w * v for w, v in time_terms[li]) <= scale * z[li])
            model.add(sum(w * v for w, v in mem_terms[li]) <= scale * z[li])
        if big_terms[li]:
            model.add(sum(big_terms[li]) <= z[li])
    model.minimize(sum(z))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 1
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return 0
    return math.ceil(solver.best_objective_bound - 1e-6)
