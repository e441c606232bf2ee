"""``plan(problem)``: the public entry point of the placement engine.

Steps: validate, classify replicas nobody could host (each gets an ``Unplaced`` reason), keep
the current placement where it still fits (pinned first, then by priority: stability), best-fit
decreasing for the rest, evict lower-priority replicas for higher-priority ones when short, then,
with a time budget, price-and-branch over GPU configurations (``colgen``; fresh plans on one
GPU class) and LNS/CP-SAT improvement (never worse than best-fit). Replicas that fit only
alone, at a duty cycle between the levels, are given GPUs of their own first (``alone``).
Every plan carries a lower bound. Callers: the operator, ``stowplan up``, ``stowplan place``,
the benchmarks. Pure: no I/O; the clock is injectable for tests.

Fixed node demands: a model no single node can host (CPU, host memory, GPUs per replica) is
``ResourcesExceedEveryNode``; GPUs of multi-GPU replicas are exclusive, so the lower bound is
their count plus the bound of the rest. Preemption (``preempt``) covers them too: a gang may
evict lower-priority replicas from the GPUs of one node, and a gang may be evicted.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from stowplan.placement.alone import fits_only_alone, place_alone
from stowplan.placement.bestfit import best_fit, decreasing_order
from stowplan.placement.bounds import big_pairs, gpu_lower_bound, matching_bound
from stowplan.placement.capacity import EPS, level_cost_matrices
from stowplan.placement.colgen_kernel import warm_up as colgen_warm_up
from stowplan.placement.errors import InvalidProblem
from stowplan.placement.models import (
    Assignment,
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    Plan,
    Problem,
    Unplaced,
    UnplacedReason,
    count_moves,
)
from stowplan.placement.nodefit import resources_message
from stowplan.placement.packindex import LEVELS, PackIndex
from stowplan.placement.packing import PackState
from stowplan.placement.preempt import preempt

Clock = Callable[[], float]


def validate(problem: Problem) -> None:
    """Raise ``InvalidProblem`` for what pydantic cannot see (duplicates, non-finite numbers)."""
    keys = [(g.node, g.index) for g in problem.gpus]
    if len(keys) != len(set(keys)):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise InvalidProblem(f"GPU {dup[0]}:{dup[1]} is listed twice")
    for m in problem.models:
        quick = (
            m.slo_ms
            + m.target_qps
            + m.latency.base_ms
            + m.latency.per_item_ms
            + m.memory.weights_mib
            + m.memory.per_item_mib
        )
        if math.isfinite(quick):  # every term finite (an overflow to inf is checked below)
            continue
        nums = {
            "slo_ms": m.slo_ms,
            "target_qps": m.target_qps,
            "latency.base_ms": m.latency.base_ms,
            "latency.per_item_ms": m.latency.per_item_ms,
            "memory.weights_mib": m.memory.weights_mib,
            "memory.per_item_mib": m.memory.per_item_mib,
        }
        for name, value in nums.items():
            if not math.isfinite(value):
                raise InvalidProblem(f"model {m.name}: {name} must be finite, got {value}")
    seen: set[tuple[str, int]] = set()
    for a in problem.current:
        if a.replica_key in seen:
            raise InvalidProblem(f"current placement lists {a.model}/{a.replica} twice")
        seen.add(a.replica_key)


def split_placeable(index: PackIndex) -> tuple[list[int], list[Unplaced]]:
    """(indices of models some GPU can take, an Unplaced for every replica of the others)."""
    unplaced: list[Unplaced] = []
    maybe = index.mats.ok.any(axis=1) & (index.max_cap_mib > -math.inf)
    maybe &= ~(index.min_mem > index.max_cap_mib)  # the cheap test behind unplaceable_reason
    if index.nodes is not None:  # node demands: ask unplaceable_reason
        maybe &= ~index.nodes.special
    placeable: list[int] = np.flatnonzero(maybe).tolist()
    for mi in np.flatnonzero(~maybe).tolist():
        why = unplaceable_reason(index, mi)
        if why is None:  # cannot happen; stay exact anyway
            placeable.append(mi)
            continue
        reps = index.models[mi].replicas
        unplaced += [why.model_copy(update={"replica": r}) for r in range(reps)]
    return sorted(placeable), unplaced


def unplaceable_reason(index: PackIndex, mi: int) -> Unplaced | None:
    """Why no GPU could host a replica of model ``mi`` even alone (None: some GPU can)."""
    m = index.models[mi]
    c = index.costs[mi]
    name = m.name

    def out(reason: UnplacedReason, msg: str) -> Unplaced:
        return Unplaced(model=name, replica=0, reason=reason, message=msg)

    if not c.feasible:
        if m.gpu_milli == 0 and m.latency.base_ms + m.latency.per_item_ms >= m.slo_ms:
            return out(
                UnplacedReason.SLO_BELOW_BASE_LATENCY,
                f"SLO {m.slo_ms} ms is not above the latency of a batch of one "
                f"({m.latency.base_ms + m.latency.per_item_ms:.3f} ms) plus a duty cycle",
            )
        qps = m.target_qps / m.replicas if m.replicas else 0.0
        return out(
            UnplacedReason.NO_CAPACITY,
            f"one replica cannot serve {qps:.1f} qps within {m.slo_ms} ms (max_batch "
            f"{m.max_batch}) even on a GPU of its own; add replicas",
        )
    biggest = float(index.max_cap_mib[mi])
    if biggest == -math.inf:
        return out(
            UnplacedReason.NO_MATCHING_NODE,
            f"no GPU matches gpu_type={m.gpu_type!r} node_selector={dict(m.node_selector)}",
        )
    need = float(index.min_mem[mi])
    if need > biggest:
        return out(
            UnplacedReason.MEMORY_EXCEEDS_EVERY_GPU,
            f"needs {need:.0f} MiB, the largest matching GPU offers {biggest:.0f} MiB",
        )
    if index.nodes is not None and index.nodes.special[mi]:
        kind = int(index.elig_kind[mi])
        if index.uniform_cap is not None:  # need <= the capacity (checked above)
            gpu_ok, key = index.elig_rows[kind], ("kind", kind)
        else:
            gpu_ok, key = index.elig_rows[kind] & (need <= index.cap_mib + EPS), None
        msg = resources_message(index.nodes, mi, gpu_ok, name, key)
        if msg is not None:
            return out(UnplacedReason.RESOURCES_EXCEED_EVERY_NODE, msg)
    return None


def no_capacity_message(index: PackIndex, mi: int) -> str:
    """Why a replica that fits an empty node found no room: what it competes for."""
    nodes = index.nodes
    what = ["GPU time", "GPU memory", "one replica per GPU"]
    if nodes is not None and nodes.gang[mi] > 1:
        what = [f"{int(nodes.gang[mi])} empty GPUs on one node"]
    if nodes is not None and nodes.uses_node[mi]:
        what.append("the node's CPU and host memory")
    return "no GPU has room left (" + ", ".join(what) + ")"


def _gang_split(index: PackIndex, placeable: list[int]) -> tuple[list[int], int]:
    """(placeable one-GPU models, GPUs their multi-GPU replicas take exclusively)."""
    nodes = index.nodes
    if nodes is None or not nodes.has_gangs:
        return placeable, 0
    single = [mi for mi in placeable if nodes.gang[mi] == 1]
    excl = sum(index.models[mi].replicas * int(nodes.gang[mi]) for mi in placeable)
    return single, excl - sum(index.models[mi].replicas for mi in single)


def lower_bound(index: PackIndex, placeable: list[int]) -> int:
    """GPU lower bound over the replicas of the placeable models (see bounds.py); the GPUs of
    multi-GPU replicas are exclusive, so they add to the bound of the others. With node CPU or
    host-memory limits, also the nodes the requests need at least (``_nodes_needed``): every
    node that hosts a replica uses at least one GPU."""
    nodes_needed = _nodes_needed(index, placeable)
    placeable, excl = _gang_split(index, placeable)
    pl = np.asarray(placeable, dtype=np.intp)
    counts = np.asarray([index.models[mi].replicas for mi in placeable], dtype=np.intp)
    shares = np.repeat(index.min_share[pl], counts)
    mems = np.repeat(index.min_mem[pl] / index.max_cap_mib[pl], counts)
    gpus = excl + gpu_lower_bound(shares.tolist(), mems.tolist(), counts.tolist())
    return max(gpus, nodes_needed)


def _nodes_needed(index: PackIndex, placeable: list[int]) -> int:
    """The fewest nodes whose CPU (and, apart, host memory) add up to the placeable replicas'
    requests, largest nodes first; 0 without node limits."""
    nodes = index.nodes
    if nodes is None or not nodes.uses_node.any():
        return 0
    reps = np.asarray([index.models[mi].replicas for mi in placeable], dtype=float)
    pl = np.asarray(placeable, dtype=np.intp)
    out = 0
    for need, have in ((nodes.need_cpu, nodes.cpu_milli), (nodes.need_mem, nodes.memory_mib)):
        total = float((need[pl] * reps).sum()) if pl.size else 0.0
        if total <= 0 or not np.isfinite(have).all():
            continue  # an unlimited node could take it all
        cum = np.cumsum(np.sort(have)[::-1])
        out = max(out, min(int(np.searchsorted(cum, total * (1 - 1e-9))) + 1, cum.size))
    return out


def tight_lower_bound(problem: Problem, colgen_s: float = 60.0) -> int:
    """The best bound we compute: ``lower_bound``, the pair-matching bound, the level-aggregated
    CP-SAT bound (5 s) and the configuration LP (column generation, ``colgen_s``; warm-started
    from the LPs of model groups above ``GROUP_MODELS`` models: ``colgen.grouped_bound``). Imports
    OR-Tools; for the benchmark and offline analysis (``plan`` reports the cheaper ``_tight``)."""
    from stowplan.placement.colgen import applies, grouped_bound  # OR-Tools, offline only

    index = PackIndex.build(problem)
    placeable = [mi for mi in range(len(index.models)) if unplaceable_reason(index, mi) is None]
    single, excl = _gang_split(index, placeable)
    config = 0
    if colgen_s > 0 and applies(index, single):  # seeded with a best-fit plan's GPUs
        state = PackState(index)
        reps = [(mi, r) for mi in single for r in range(index.models[mi].replicas)]
        best_fit(state, decreasing_order(index, reps))
        seeds = [[mi for mi, _ in state.residents[g]] for g in state.busy_ids().tolist()]
        config = excl + grouped_bound(index, single, colgen_s, seeds=seeds)
    return max(_tight(index, placeable), _level(index, placeable, 5.0), config)


def _tight(index: PackIndex, placeable: list[int]) -> int:
    from stowplan.placement.cpsat import fractional_matching  # OR-Tools: with a budget only

    base = lower_bound(index, placeable)
    placeable, excl = _gang_split(index, placeable)
    big = [mi for mi in placeable if index.min_share[mi] > 1 / 3 + 1e-9]
    if len(big) < 2:
        return base
    costs = [index.costs[mi] for mi in big]
    caps = np.asarray(
        [float(index.cap_mib[index.elig_rows[index.elig_kind[mi]]].max()) for mi in big]
    )
    pairs = big_pairs(
        np.stack([c.busy_ms for c in costs]),
        np.stack([c.memory_mib for c in costs]),
        np.stack([c.ok for c in costs]),
        LEVELS,
        caps,
    )
    counts = [index.models[mi].replicas for mi in big]
    return max(base, excl + matching_bound(counts, fractional_matching(counts, pairs)))


def _level(index: PackIndex, placeable: list[int], time_limit_s: float) -> int:
    from stowplan.placement.cpsat import level_bound  # OR-Tools: with a budget only

    single, excl = _gang_split(index, placeable)
    return max(lower_bound(index, placeable), excl + level_bound(index, single, time_limit_s))


def _by_configurations(
    state: PackState, placeable: list[int], columns_until: float, deadline: float, clock: Clock
) -> PackState:
    """Price-and-branch (``colgen``), per group of at most ``GROUP_MODELS`` models that share
    duty-cycle levels (one group up to that size; larger instances do not converge as one LP
    in the budget), each group taking an equal share of the time left: generate GPU
    configurations until its share of ``columns_until`` (seeded with the GPUs of ``state``),
    round the configuration LP by diving (at most 0.8 of the rest of its share; what it
    leaves uncovered goes to best-fit at the end), then pick the fewest configurations
    covering its replicas with CP-SAT (hinted with the better of the dive and ``state``'s
    GPUs). The state is rebuilt from the groups' GPUs when they are fewer (measured with the
    LNS after it: 200 replicas 97 -> 93 GPUs in a 10 s budget, the proven optimum; 1,000 447
    -> 439 in 10 s; 3,000 1,327 -> 1,307-1,309 in 30 s; 10,000 4,269 -> 4,227-4,234 in 40 s,
    three groups). Only for a fresh plan (no current placement: no moves to weigh) where the
    configuration model applies; otherwise ``state`` is returned unchanged."""
    # OR-Tools loads only for plans with a time budget (best-fit plans never need it)
    from stowplan.placement.colgen import GROUP_MODELS, ColumnGeneration, applies, model_groups

    index = state.index
    if not applies(index, placeable):
        return state
    used = state.busy_ids().tolist()
    gpu_models = [sorted(mi for mi, _ in state.residents[g]) for g in used]
    groups = model_groups(index, placeable, GROUP_MODELS)
    gpus: list[list[int]] = []  # model indices per GPU
    rest: list[int] = []  # models with a replica no group's GPUs cover (one entry each)
    start = clock()
    split = (columns_until - start) / max(deadline - start, 1e-9)  # of each group's time
    for i, group in enumerate(groups):
        now = clock()
        group_end = now + max(0.0, deadline - now) / (len(groups) - i)
        members = set(group)
        seeds = [[mi for mi in ms if mi in members] for ms in gpu_models]
        seeds = [ms for ms in seeds if ms]
        cg = ColumnGeneration(index, group, seeds)
        cg.run(now + split * (group_end - now), clock, bound=False)
        pos = {int(m): k for k, m in enumerate(cg.models.tolist())}
        hint = [frozenset(pos[mi] for mi in ms) for ms in seeds]
        dived = cg.dive(clock() + 0.8 * max(0.0, group_end - clock()), clock)
        if cg.uncovered.any():  # stopped early: best-fit places the rest (below)
            gpus += [[int(cg.models[k]) for k in sorted(col)] for col in dived]
            rest += [int(cg.models[k]) for k in np.repeat(np.arange(len(group)), cg.uncovered)]
            continue
        if len(dived) < len(hint):
            hint = dived
            cg.add_columns(dived)  # trimmed columns, so that the hint names pool columns
        best = cg.integer_plan(hint, group_end - clock())
        if best is None or len(best) > len(hint):
            best = hint
        gpus += [[int(cg.models[k]) for k in sorted(col)] for col in best]
    if len(gpus) >= len(used):
        return state
    new = PackState(index, use_kernel=state.use_kernel)
    next_replica = dict.fromkeys(placeable, 0)
    for g, ms in enumerate(gpus):  # one GPU class: any GPU takes any configuration
        for mi in ms:
            new.add((mi, next_replica[mi]), g)
            next_replica[mi] += 1
    todo = []
    for mi in rest:
        todo.append((mi, next_replica[mi]))
        next_replica[mi] += 1
    left = best_fit(new, decreasing_order(index, todo))
    if left or new.used() >= len(used):
        return state
    return new


def _keep_current(state: PackState, problem: Problem) -> None:
    index = state.index
    current = sorted(
        problem.current,
        key=lambda a: (
            a.replica_key not in problem.pinned,
            -index.models[index.model_pos[a.model]].priority if a.model in index.model_pos else 0,
            a.model,
            a.replica,
        ),
    )
    for a in current:
        mi = index.model_pos.get(a.model)
        if mi is None or a.replica >= index.models[mi].replicas:
            continue
        if (mi, a.replica) in state.where:
            continue
        gs = state.current_gpus(mi, a)
        if gs is not None:
            state.place((mi, a.replica), gs)


def plan(
    problem: Problem,
    *,
    time_limit_s: float = 0.0,
    seed: int = 0,
    clock: Clock = time.monotonic,
    use_kernel: bool = True,
) -> Plan:
    """Place every replica of ``problem`` (see module docstring); never returns an invalid plan.

    ``time_limit_s == 0``: best-fit decreasing only. ``> 0``: for a fresh plan (no current
    placement) on one GPU class, price-and-branch over GPU configurations (``colgen``, 90 % of
    the budget), then LNS with CP-SAT sub-problems for the rest; never worse than best-fit.
    Replicas that fit only alone, at a duty cycle between the levels (``alone``), first take
    GPUs that no other replica runs on (their current one if they have one); the search then
    plans the rest on the other GPUs. ``use_kernel=False``: best-fit takes its numpy path instead
    of the compiled kernel (the same plans, slower; benchmarks and tests compare the two).
    Raises ``InvalidProblem``.
    """
    start = clock()
    if not (time_limit_s >= 0 and math.isfinite(time_limit_s)):
        raise InvalidProblem(f"time_limit_s must be a finite number >= 0, got {time_limit_s}")
    validate(problem)
    level_ok = np.asarray(level_cost_matrices(problem.models).ok.any(axis=1), dtype=bool)
    alone = [
        (m, cap)
        for m, ok in zip(problem.models, level_ok.tolist(), strict=True)
        if (cap := fits_only_alone(m, ok)) is not None
    ]
    if not alone:
        return _plan(
            problem, time_limit_s=time_limit_s, seed=seed, clock=clock, use_kernel=use_kernel
        )
    names = {m.name for m, _ in alone}
    others = [a for a in problem.current if a.model not in names]
    reserved, alone_unplaced = place_alone(problem, alone, others)
    rest = _without(problem, names, reserved)
    left = max(0.0, time_limit_s - (clock() - start)) if time_limit_s > 0 else 0.0
    sub = _plan(rest, time_limit_s=left, seed=seed, clock=clock, use_kernel=use_kernel)
    assignments = (*sub.assignments, *reserved)
    return sub.model_copy(
        update={
            "assignments": assignments,
            "unplaced": tuple(
                sorted((*sub.unplaced, *alone_unplaced), key=lambda u: (u.model, u.replica))
            ),
            "gpus_used": sub.gpus_used + len(reserved),
            "moves": count_moves(problem.current, assignments),
            "solve_seconds": max(0.0, clock() - start),
        }
    )


def _without(problem: Problem, names: set[str], reserved: list[Assignment]) -> Problem:
    """``problem`` less the models in ``names`` and the GPUs (and node CPU/host memory) that
    ``reserved`` gives them; the lower bound of what is left stays valid for the whole."""
    taken = {a.gpu_key for a in reserved}
    demand = {m.name: m for m in problem.models}
    cpu: dict[str, int] = defaultdict(int)
    mem: dict[str, int] = defaultdict(int)
    for a in reserved:
        cpu[a.node] += demand[a.model].cpu_milli
        mem[a.node] += demand[a.model].host_memory_mib
    return problem.model_copy(
        update={
            "gpus": tuple(g for g in problem.gpus if g.key not in taken),
            "models": tuple(m for m in problem.models if m.name not in names),
            "current": tuple(
                a for a in problem.current if a.model not in names and not set(a.gpu_keys) & taken
            ),
            "pinned": frozenset(k for k in problem.pinned if k[0] not in names),
            "nodes": tuple(
                n.model_copy(
                    update={
                        "cpu_milli": max(0, n.cpu_milli - cpu[n.node]),
                        "memory_mib": max(0, n.memory_mib - mem[n.node]),
                    }
                )
                for n in problem.nodes
            ),
        }
    )


def _plan(
    problem: Problem,
    *,
    time_limit_s: float,
    seed: int,
    clock: Clock,
    use_kernel: bool,
) -> Plan:
    start = clock()
    index = PackIndex.build(problem)
    placeable, unplaced = split_placeable(index)

    state = PackState(index, use_kernel=use_kernel)
    _keep_current(state, problem)
    state_before = state.copy() if time_limit_s > 0 else state
    todo = [(mi, r) for mi in placeable for r in range(index.models[mi].replicas)]
    todo = [rep for rep in todo if rep not in state.where]
    left = best_fit(state, decreasing_order(index, todo))
    if time_limit_s > 0:  # multi-start: the plain size order sometimes packs tighter
        other = state_before.copy()
        other_left = best_fit(other, decreasing_order(index, todo, by_slo=False))
        if (len(other_left), other.used()) < (len(left), state.used()):
            state, left = other, other_left
    pinned = {(index.model_pos[name], r) for name, r in problem.pinned if name in index.model_pos}
    if left and any(
        index.models[r[0]].priority > min(m.priority for m in index.models) for r in left
    ):
        left = preempt(state, decreasing_order(index, left), pinned)

    if time_limit_s > 0:
        from stowplan.placement.lns import improve  # ortools is imported only when asked for

        if not left and not problem.current:
            state = _by_configurations(
                state, placeable, start + 0.45 * time_limit_s, start + 0.9 * time_limit_s, clock
            )
        state, left = improve(
            state, left, problem, deadline=start + time_limit_s, seed=seed, clock=clock
        )

    for mi, r in sorted(left):
        m = index.models[mi]
        unplaced.append(
            Unplaced(
                model=m.name,
                replica=r,
                reason=UnplacedReason.NO_CAPACITY,
                message=no_capacity_message(index, mi),
            )
        )
    assignments = state.assignments()
    moves = count_moves(problem.current, assignments)
    return Plan(
        assignments=tuple(assignments),
        unplaced=tuple(sorted(unplaced, key=lambda u: (u.model, u.replica))),
        gpus_used=state.used(),
        lower_bound=_tight(index, placeable) if time_limit_s > 0 else lower_bound(index, placeable),
        solve_seconds=max(0.0, clock() - start),
        moves=moves,
    )


def warm_up(search: bool = True) -> None:
    """Compile or load the numba kernels before the first real plan: best-fit's on a tiny
    problem and, with ``search`` (plans with a time budget), the column generation's pricing.
    About 3 s + 12 s in a fresh environment, well under 1 s from numba's on-disk cache; the
    operator runs it at startup, so its first timed plan does not pay for it inside the budget.
    A kernel that cannot load leaves its plain fallback in place (same plans)."""
    gpus = tuple(Gpu(node="n0", index=i, memory_mib=16000, gpu_type="A100") for i in range(2))
    model = ModelDemand(
        name="warm-up",
        replicas=2,
        slo_ms=50,
        target_qps=100,
        latency=LatencyProfile(base_ms=4.0, per_item_ms=0.5),
        memory=MemoryProfile(weights_mib=500, per_item_mib=20),
        max_batch=128,
    )
    plan(Problem(gpus=gpus, models=(model,)))
    if search:
        colgen_warm_up()
