"""Best-fit decreasing: the fallback plan, the CP-SAT/LNS starting point and the online policy.

For each replica (in the caller's order; ``decreasing_order`` gives priority, then size) pick,
among the GPUs it may use, the already used GPU whose load after adding it is the highest (the
tightest fit, at the best duty-cycle level for that GPU); open an empty GPU only when no used one
fits, again the tightest. Callers: planner, online, lns. Pure; mutates only the PackState given.

Speed (``plan`` calls this on every operator pass): a replica is tested only against the compact
set of used GPUs that pass two cheap necessary conditions, with one gather per test (see
``PackIndex.ev``); empty GPUs of a class are interchangeable, so only the first of each class is
tried, with the model's load alone precomputed per capacity; consecutive replicas of one model
(``best_fit``) are placed with one test: they cannot share a GPU and do not change the other
GPUs, so they take the k tightest fits in order, then empty GPUs. Same plans as placing one
replica at a time with ``choose_gpu`` (``tests/placement/test_bestfit_speed.py``).

Compiled kernel: without node demands, ``best_fit`` hands the whole sequence to
``bestfit_kernel`` (numba, imported on first use; compiled once and cached on disk) which makes
the same choices with the same float operations (``tests/placement/test_bestfit_kernel.py``);
the numpy code below stays the definition and the fallback (no numba, node demands, or
``PackState.use_kernel`` False: ``plan(problem, use_kernel=False)``).

Fixed node demands (``PackIndex.nodes``, None otherwise so the above is untouched): multi-GPU
replicas go first within a priority (more GPUs first) onto the node fewest type-restricted
models want, then the tightest, with enough empty eligible GPUs and CPU/memory
(``choose_gang``); a replica with a CPU/host-memory request only considers GPUs whose node has
that much left, and such models are placed one replica at a time.
"""

from __future__ import annotations

import heapq
import importlib.util
from collections.abc import Iterable, Sequence
from types import ModuleType

import numpy as np
import numpy.typing as npt

from stowplan.placement.capacity import EPS
from stowplan.placement.nodefit import first_free_per_class, gang_candidates
from stowplan.placement.packindex import ROW, PackIndex, Replica
from stowplan.placement.packing import PackState

_INF = np.inf
# best_fit hands sequences at least this long to the compiled kernel (``bestfit_kernel``)
KERNEL_MIN_REPLICAS = 1
_HAVE_NUMBA: bool | None = None


def choose_gpu(state: PackState, mi: int) -> int | None:
    """The best-fit GPU for one replica of model ``mi``, or None if none fits (always None for
    a multi-GPU replica: ``choose_gang``)."""
    nodes = state.index.nodes
    if nodes is not None and nodes.special[mi]:
        return _choose_gpu_nodes(state, mi)
    cand = used_candidates(state, mi)
    if cand.size:
        best = best_loads(state, mi, cand)
        best[best == _INF] = -1.0  # loads are >= 0: a GPU that fits always wins over -1
        i = int(np.argmax(best))
        if not best[i] < 0:
            return int(cand[i])
    return choose_empty(state, mi)


def _choose_gpu_nodes(state: PackState, mi: int) -> int | None:
    """``choose_gpu`` for a model with a node CPU/host-memory request: only GPUs whose node
    has that much left (used ones first, then the first empty GPU of each class)."""
    index = state.index
    nodes = index.nodes
    assert nodes is not None
    if nodes.gang[mi] > 1:
        return None
    cand = used_candidates(state, mi)
    if cand.size:
        cand = cand[nodes.room(mi, state.cpu_left, state.hmem_left, nodes.gpu_node[cand])]
    if cand.size:
        best = best_loads(state, mi, cand)
        best[best == _INF] = -1.0
        i = int(np.argmax(best))
        if not best[i] < 0:
            return int(cand[i])
    if not index.min_share[mi] <= 1.0 + 1e-9:
        return None
    free = nodes.node_room(mi, state.cpu_left, state.hmem_left)[nodes.gpu_node]
    free &= state.count == 0
    if index.restricted[mi]:
        free &= index.elig_rows[index.elig_kind[mi]]
    if index.uniform_cap is None:
        free &= index.min_mem[mi] <= index.cap_mib + EPS
    elif not index.min_mem[mi] <= index.uniform_cap + EPS:
        return None
    if state.holds.any_closed(mi):
        free &= ~state.holds.row(mi)
    best_g, best_load = -1, -1.0
    single = len(index.class_first) == 1
    for g in first_free_per_class(index.gpu_class, free, single).tolist():
        load = float(index.empty_loads(float(index.cap_mib[g]))[mi])
        if load > best_load:  # ascending g: the lowest index wins ties
            best_g, best_load = g, load
    return best_g if best_g >= 0 else None


def choose_gang(state: PackState, mi: int) -> tuple[int, ...] | None:
    """GPUs for one multi-GPU replica of ``mi`` (``nodefit.gang_candidates``), or None."""
    index = state.index
    nodes = index.nodes
    assert nodes is not None
    free = (state.count == 0) & index.elig_rows[index.elig_kind[mi]] & ~state.holds.row(mi)
    free &= index.min_mem[mi] <= index.cap_mib + EPS
    return gang_candidates(nodes, mi, free, state.cpu_left, state.hmem_left)


def choose(state: PackState, mi: int) -> tuple[int, ...] | None:
    """The GPU(s) for one replica of ``mi``: ``choose_gang`` or ``choose_gpu``."""
    nodes = state.index.nodes
    if nodes is not None and nodes.gang[mi] > 1:
        return choose_gang(state, mi)
    g = choose_gpu(state, mi)
    return None if g is None else (g,)


def used_candidates(state: PackState, mi: int) -> npt.NDArray[np.intp]:
    """Used GPUs, ascending, passing cheap necessary conditions for a replica of ``mi`` (free
    time share, free memory at the lowest level), not holding ``mi``, eligible (a superset of
    those where it fits: ``best_loads`` is exact)."""
    index = state.index
    act, ascending = state.active()
    ok = state.open_slack.take(act) >= index.min_share[mi] - 1e-9
    ok &= state.mem_free0.take(act) >= index.min_mem[mi] - 1e-6
    cand = act[ok]
    if cand.size:
        if state.holds.any_closed(mi):
            held = state.holds.closed(mi, cand)
            if np.count_nonzero(held):
                cand = cand[~held]
        if index.restricted[mi]:
            cand = cand[index.elig_rows[index.elig_kind[mi]].take(cand)]
        if not ascending:
            cand.sort()
    rows: npt.NDArray[np.intp] = cand
    return rows


def best_loads(state: PackState, mi: int, cand: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    """(len(cand),) the load after adding a replica of ``mi`` to each candidate at its best
    level (max of time and memory share; the lowest over the levels where it fits), inf where
    it fits at no level. The same float operations as ``PackState.loads``."""
    index = state.index
    ev = index.ev
    s, e = ev.start[mi], ev.start[mi + 1]
    k = e - s
    if k == 0:
        return np.full(cand.size, _INF)
    a, b = 2 * s, 2 * e
    x = state.rows.take((cand * ROW)[:, None] + ev.off[a:b])
    x += ev.add[a:b]  # busy (+inf where a resident forbids the level) | memory
    if index.uniform_cap is not None:
        fit = x <= ev.lim[a:b]
        x /= ev.div[a:b]  # time share | memory share
        u = np.where(fit, x, _INF)
        v = np.maximum(u[:, :k], u[:, k:])
        best: npt.NDArray[np.float64] = v.min(axis=1)
        return best
    t, m = x[:, :k], x[:, k:]
    cap = index.cap_mib.take(cand)[:, None]
    fit = (t <= ev.lim[a : a + k]) & (m <= cap + EPS)
    load = np.maximum(t / ev.div[a : a + k], m / cap)
    load[~fit] = _INF
    least: npt.NDArray[np.float64] = load.min(axis=1)
    return least


def choose_empty(state: PackState, mi: int) -> int | None:
    """The tightest empty GPU for a replica of ``mi`` (lowest index on ties), or None.

    Empty GPUs of one class are interchangeable: only the first of each class is tried (or,
    when the caller reserved it, the next one this model may use)."""
    index = state.index
    if not index.min_share[mi] <= 1.0 + 1e-9:
        return None
    elig = index.elig_rows[index.elig_kind[mi]] if index.restricted[mi] else None
    best_g, best_load = -1, -1.0
    for k in range(len(state.empty_heaps)):
        g = state.first_empty(k)
        if g is None or (elig is not None and not elig[g]):
            continue
        if state.holds.is_closed(mi, g):  # a caller reserved this empty GPU: look further
            alt = np.flatnonzero(
                (index.gpu_class == k)
                & (state.count == 0)
                & ~state.holds.row(mi)
                & index.elig_rows[index.elig_kind[mi]]
            )
            if alt.size == 0:
                continue
            g = int(alt[0])
        cap = float(index.cap_mib[g])
        if not index.min_mem[mi] <= cap + EPS:
            continue
        load = float(index.empty_loads(cap)[mi])
        if load < 0:
            continue
        if load > best_load or (load == best_load and g < best_g):
            best_g, best_load = g, load
    return best_g if best_g >= 0 else None


def decreasing_order(
    index: PackIndex, replicas: Iterable[Replica], *, by_slo: bool = True
) -> list[Replica]:
    """Higher priority first; then (``by_slo``) the replicas whose SLO allows only short duty
    cycles, so that GPUs fill with replicas that agree on a cycle length (mixing a tight SLO
    into a GPU shortens everyone's cycle and inflates their share: 447 vs 459 GPUs on the
    1,000-replica benchmark instance); then larger (time or memory share) first; then names."""
    reps = list(replicas)
    if not reps:
        return []
    arr = np.asarray(reps, dtype=np.intp).reshape(-1, 2)
    mi, r = arr[:, 0], arr[:, 1]
    top = index.top_level[mi] if by_slo else np.zeros_like(mi)
    keys: tuple[npt.NDArray[np.generic], ...] = (r, mi, -index.size_key[mi], top)
    if index.nodes is not None and index.nodes.has_gangs:  # multi-GPU first, more GPUs first
        keys += (-index.nodes.gang[mi],)
    keys += (-index.priority[mi],)
    return [reps[i] for i in np.lexsort(keys).tolist()]


def best_fit(state: PackState, replicas: Iterable[Replica]) -> list[Replica]:
    """Place ``replicas`` in the given order; returns those that fit nowhere.

    Same result as ``choose_gpu`` + ``add`` one replica at a time; a run of consecutive
    replicas of one model is placed with one candidate test."""
    reps = list(replicas)
    nodes = state.index.nodes
    if nodes is None and len(reps) >= KERNEL_MIN_REPLICAS and state.use_kernel and _kernel_ok():
        kernel = _load_kernel()
        if kernel is not None:
            placed: list[tuple[int, int]] = kernel.place(state, reps)
            return placed
    left: list[Replica] = []
    i, n = 0, len(reps)
    while i < n:
        mi = reps[i][0]
        j = i + 1
        while j < n and reps[j][0] == mi:
            j += 1
        if nodes is not None and nodes.special[mi]:  # node demands: one replica at a time
            for rep in reps[i:j]:
                gs = choose(state, mi)
                if gs is None:
                    left.append(rep)
                else:
                    state.place(rep, gs)
        else:
            _place_run(state, mi, reps[i:j], left)
        i = j
    return left


def _kernel_ok() -> bool:
    """Whether the compiled path can run: numba imports."""
    global _HAVE_NUMBA
    if _HAVE_NUMBA is None:
        _HAVE_NUMBA = importlib.util.find_spec("numba") is not None
    return _HAVE_NUMBA


_KERNEL_ERROR: str | None = None  # why the kernel could not be loaded (then: numpy path)


def _load_kernel() -> ModuleType | None:
    """The kernel module, or None when it cannot load. numba raises at import when
    ``cache=True`` finds no writable cache directory (a read-only root filesystem without
    ``$NUMBA_CACHE_DIR``, as in a restricted pod): the plan must still be made, so best-fit
    falls back to the numpy path (same plans, ~2.7x slower) and ``kernel_status`` says why."""
    global _KERNEL_ERROR
    if _KERNEL_ERROR is not None:
        return None
    try:
        from stowplan.placement import bestfit_kernel  # numba: imported on first use only
    except Exception as exc:  # any failure of the optional accelerator: use numpy
        _KERNEL_ERROR = f"{type(exc).__name__}: {exc}"
        return None
    return bestfit_kernel


def kernel_status(use_kernel: bool = True) -> str:
    """Which path ``best_fit`` takes without node demands, in words (for benchmarks)."""
    if not use_kernel:
        return "numpy (the kernel is switched off)"
    if not _kernel_ok():
        return "numpy (numba is not installed)"
    if _load_kernel() is None:
        return f"numpy (the kernel did not load: {_KERNEL_ERROR})"
    from importlib.metadata import version

    return f"compiled kernel (numba {version('numba')})"


def _place_run(state: PackState, mi: int, run: Sequence[Replica], left: list[Replica]) -> None:
    """Replicas of one model, in order: the tightest used GPUs that fit, then empty ones."""
    chosen: list[int] = []
    cand = used_candidates(state, mi)
    if cand.size:
        best = best_loads(state, mi, cand)
        best[best == _INF] = -1.0
        if len(run) == 1:
            i = int(np.argmax(best))
            if not best[i] < 0:
                chosen = [int(cand[i])]
        else:
            order = np.argsort(-best, kind="stable")[: len(run)]  # ties: lowest index first
            chosen = cand[order[best[order] >= 0]].tolist()
        if chosen:
            state.add_many(mi, run[: len(chosen)], chosen)
    if len(chosen) < len(run):
        _open_empties(state, mi, run[len(chosen) :], left)


def _open_empties(state: PackState, mi: int, run: Sequence[Replica], left: list[Replica]) -> None:
    """Replicas of one model that no used GPU takes: each opens the tightest empty GPU."""
    index = state.index
    if len(state.empty_heaps) != 1:
        for rep in run:
            g = choose_empty(state, mi)
            if g is None:
                left.append(rep)
            else:
                state.add(rep, g)
        return
    # one class: every empty GPU has the same capacity and eligibility, so the replicas take
    # the lowest-index empty GPUs this model does not hold (what ``choose_empty`` picks)
    if not index.opens_alone[mi] or (index.restricted[mi] and not index.is_eligible(mi, 0)):
        left.extend(run)
        return
    heap, count, is_closed = state.empty_heaps[0], state.count, state.holds.is_closed
    gs: list[int] = []
    held: list[int] = []
    while len(gs) < len(run) and heap:
        g = heapq.heappop(heap)
        if count[g] > 0 or (gs and g == gs[-1]):  # stale or a duplicate entry
            continue
        if is_closed(mi, g):  # a caller reserved this empty GPU for others: keep it in the heap
            held.append(g)
            continue
        gs.append(g)
    for g in held:
        heapq.heappush(heap, g)
    if gs:
        state.open_many(mi, run[: len(gs)], gs)
    left.extend(run[len(gs) :])
