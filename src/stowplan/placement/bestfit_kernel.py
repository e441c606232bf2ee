"""Compiled best-fit (numba): ``bestfit.best_fit`` for problems without node demands.

``place`` runs the whole replica sequence in one ``@njit(cache=True)`` call over the
``PackState`` arrays (rows, count, free time share, level-0 free memory) and then records the
replicas in the Python-side state (``where``, ``residents``, ``holds``, heaps). It makes the
same choices as ``bestfit._place_run``, with the same float operations: per run of one model,
the used GPUs that pass the cheap conditions of ``used_candidates`` take the replicas, tightest
fit first (load after adding at the best level, ``best_loads``; ties: lowest index), then the
first empty GPU of the tightest class (``choose_empty``; ties: lowest index), skipping GPUs
closed to the model (``holds``). ``tests/placement/test_bestfit_kernel.py`` checks the plans
are identical to the numpy path.

Callers: ``bestfit.best_fit`` only (when ``index.nodes is None`` and numba imports). numba is
imported here, and this module only on first use. Must not be used with node demands; must not
change a choice (the numpy path is the definition).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from stowplan.placement.capacity import EPS
from stowplan.placement.packindex import BUSYX, LEVELS, NL, ROW, PackIndex, Replica
from stowplan.placement.packing import PackState


@njit(cache=True)
def _add_row(
    row: Any,
    inc: Any,
    g: int,
    count: Any,
    levels: Any,
    cap: Any,
    open_slack: Any,
    mem_free0: Any,
) -> None:
    """Add one replica's per-level costs to GPU ``g``'s row and refresh its free time share and
    level-0 free memory (``PackState.add``'s bookkeeping, same float operations)."""
    for j in range(row.size):
        row[j] += inc[j]
    count[g] += 1
    lo = np.inf
    for j in range(NL):
        x = row[BUSYX + j] / levels[j]
        if x < lo:
            lo = x
    open_slack[g] = 1.0 - lo
    mem_free0[g] = cap[g] - row[NL]


@njit(cache=True)
def _place_runs(
    run_model: Any,
    run_start: Any,
    closed_ptr: Any,
    closed_gpus: Any,
    rows: Any,
    count: Any,
    open_slack: Any,
    mem_free0: Any,
    every: Any,
    inc: Any,
    cap: Any,
    ev_start: Any,
    ev_off: Any,
    ev_add: Any,
    ev_div: Any,
    ev_lim: Any,
    uniform: bool,
    min_share: Any,
    min_mem: Any,
    restricted: Any,
    elig_rows: Any,
    elig_kind: Any,
    gpu_class: Any,
    class_ptr: Any,
    class_gpus: Any,
    empty_load: Any,
    slack_floor: float,
    mem_floor: float,
    levels: Any,
    eps: float,
) -> Any:
    n_runs = run_model.size
    n_reps = run_start[n_runs]
    n_gpus = count.size
    n_classes = class_ptr.size - 1
    out = np.full(n_reps, -1, dtype=np.int64)
    # GPUs closed to the current run's model: mark[g] == run + 1
    mark = np.zeros(n_gpus, dtype=np.int64)
    # replicas placed here, chained per model (a model may come back in a later run)
    head = np.full(elig_kind.size, -1, dtype=np.int64)
    nxt = np.full(n_reps, -1, dtype=np.int64)
    # used GPUs that may still take a replica, with copies of their free time share and
    # level-0 free memory (a contiguous scan); pos[g]: g's place there, -1 if none. Pruned
    # once below what the smallest model needs (nothing is removed in here).
    act = np.empty(n_gpus, dtype=np.int64)
    act_sl = np.empty(n_gpus, dtype=np.float64)
    act_mem = np.empty(n_gpus, dtype=np.float64)
    pos = np.full(n_gpus, -1, dtype=np.int64)
    n_act = 0
    for g in range(n_gpus):
        if count[g] > 0 and open_slack[g] >= slack_floor and mem_free0[g] >= mem_floor:
            act[n_act] = g
            act_sl[n_act] = open_slack[g]
            act_mem[n_act] = mem_free0[g]
            pos[g] = n_act
            n_act += 1
    cand = np.empty(n_gpus, dtype=np.int64)
    sel = np.empty(n_gpus + 1, dtype=np.int64)
    cload = np.empty(n_gpus, dtype=np.float64)
    first = np.empty(n_classes, dtype=np.int64)  # first possibly empty position per class
    for k in range(n_classes):
        first[k] = class_ptr[k]
    for r in range(n_runs):
        mi = run_model[r]
        stamp = r + 1
        for j in range(closed_ptr[r], closed_ptr[r + 1]):
            mark[closed_gpus[j]] = stamp
        p = head[mi]
        while p >= 0:
            mark[out[p]] = stamp
            p = nxt[p]
        s0 = run_start[r]
        n_run = run_start[r + 1] - s0
        kind = elig_kind[mi]
        restr = restricted[mi]
        share_lo = min_share[mi] - 1e-9
        mem_lo = min_mem[mi] - 1e-6
        s, e = ev_start[mi], ev_start[mi + 1]
        kk = e - s
        a = 2 * s
        # used GPUs: loads of those that fit (ascending GPU order is not needed: ties are
        # broken on the index explicitly)
        if r % 16 == 0:  # drop the GPUs that can take nothing any more
            w = 0
            for i in range(n_act):
                g = act[i]
                if not (act_sl[i] >= slack_floor and act_mem[i] >= mem_floor):
                    pos[g] = -1
                    continue
                act[w] = g
                act_sl[w] = act_sl[i]
                act_mem[w] = act_mem[i]
                pos[g] = w
                w += 1
            n_act = w
        # the cheap necessary conditions of ``used_candidates``, branch-free over the
        # contiguous copies (most GPUs fail them)
        n_pass = 0
        for i in range(n_act):
            sel[n_pass] = i
            n_pass += (act_sl[i] >= share_lo) & (act_mem[i] >= mem_lo)
        n_cand = 0
        for ii in range(n_pass):
            g = act[sel[ii]]
            if every[g] or mark[g] == stamp:
                continue
            if restr and not elig_rows[kind, g]:
                continue
            if kk == 0:
                continue
            best = np.inf
            for lv in range(kk):
                t = rows[g, ev_off[a + lv]] + ev_add[a + lv]
                m = rows[g, ev_off[a + kk + lv]] + ev_add[a + kk + lv]
                if uniform:
                    if not (t <= ev_lim[a + lv] and m <= ev_lim[a + kk + lv]):
                        continue
                    tt = t / ev_div[a + lv]
                    mm = m / ev_div[a + kk + lv]
                else:
                    c = cap[g]
                    if not (t <= ev_lim[a + lv] and m <= c + eps):
                        continue
                    tt = t / ev_div[a + lv]
                    mm = m / c
                ld = tt if tt >= mm else mm
                if ld < best:
                    best = ld
            if best != np.inf and best >= 0.0:
                cand[n_cand] = g
                cload[n_cand] = best
                n_cand += 1
        # the n_run tightest, highest load first, lowest index on ties
        placed = 0
        while placed < n_run and n_cand > 0:
            bi = 0
            for i in range(1, n_cand):
                if cload[i] > cload[bi] or (cload[i] == cload[bi] and cand[i] < cand[bi]):
                    bi = i
            g = cand[bi]
            n_cand -= 1
            cand[bi] = cand[n_cand]
            cload[bi] = cload[n_cand]
            q = s0 + placed
            out[q] = g
            nxt[q] = head[mi]
            head[mi] = q
            _add_row(rows[g], inc[mi], g, count, levels, cap, open_slack, mem_free0)
            j = pos[g]
            if j >= 0:
                act_sl[j] = open_slack[g]
                act_mem[j] = mem_free0[g]
            placed += 1
        # empty GPUs: the first of the tightest class (not closed to the model)
        while placed < n_run:
            if not min_share[mi] <= 1.0 + 1e-9:
                break
            best_g = -1
            best_ld = -1.0
            for k in range(n_classes):
                f = first[k]
                while f < class_ptr[k + 1] and count[class_gpus[f]] > 0:
                    f += 1
                first[k] = f
                if f == class_ptr[k + 1]:
                    continue
                g = class_gpus[f]
                if restr and not elig_rows[kind, g]:
                    continue
                while f < class_ptr[k + 1] and (
                    count[class_gpus[f]] > 0 or every[class_gpus[f]] or mark[class_gpus[f]] == stamp
                ):
                    f += 1
                if f == class_ptr[k + 1]:
                    continue
                g = class_gpus[f]
                if not min_mem[mi] <= cap[g] + eps:
                    continue
                ld = empty_load[k, mi]
                if ld < 0:
                    continue
                if ld > best_ld or (ld == best_ld and g < best_g):
                    best_g = g
                    best_ld = ld
            if best_g < 0:
                break
            g = best_g
            q = s0 + placed
            out[q] = g
            nxt[q] = head[mi]
            head[mi] = q
            mark[g] = stamp
            _add_row(rows[g], inc[mi], g, count, levels, cap, open_slack, mem_free0)
            if open_slack[g] >= slack_floor and mem_free0[g] >= mem_floor:
                act[n_act] = g
                act_sl[n_act] = open_slack[g]
                act_mem[n_act] = mem_free0[g]
                pos[g] = n_act
                n_act += 1
            placed += 1
    return out


def _tables(index: PackIndex) -> dict[str, Any]:
    """The per-problem arrays the kernel reads (cached on the index)."""
    cached: dict[str, Any] | None = index.__dict__.get("_kernel_tables")
    if cached is not None:
        return cached
    n_classes = len(index.class_first)
    order = np.argsort(index.gpu_class, kind="stable").astype(np.int64)
    ptr = np.zeros(n_classes + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(index.gpu_class, minlength=n_classes))
    empty_load = (
        np.stack([index.empty_loads(float(index.cap_mib[f])) for f in index.class_first])
        if n_classes
        else np.zeros((0, len(index.models)))
    )
    ev = index.ev
    out = {
        "inc": np.ascontiguousarray(index.inc),
        "cap": index.cap_mib,
        "ev_start": np.asarray(ev.start, dtype=np.int64),
        "ev_off": ev.off.astype(np.int64),
        "ev_add": ev.add,
        "ev_div": ev.div,
        "ev_lim": ev.lim,
        "uniform": index.uniform_cap is not None,
        "min_share": index.min_share,
        "min_mem": index.min_mem,
        "restricted": index.restricted,
        "elig_rows": np.ascontiguousarray(index.elig_rows),
        "elig_kind": index.elig_kind.astype(np.int64),
        "gpu_class": index.gpu_class,
        "class_ptr": ptr,
        "class_gpus": order,
        "empty_load": np.ascontiguousarray(empty_load),
        "slack_floor": float(index.slack_floor),
        # a GPU with less level-0 free memory can take no replica at all
        "mem_floor": float(index.min_mem.min(initial=np.inf)) - 1e-6,
        "levels": LEVELS.astype(np.float64),
        "eps": float(EPS),
    }
    index.__dict__["_kernel_tables"] = out
    return out


def place(state: PackState, reps: Sequence[Replica]) -> list[Replica]:
    """``bestfit.best_fit(state, reps)`` for a state without node demands; returns the
    replicas that fit nowhere, in order."""
    index = state.index
    assert index.nodes is None
    if not reps:
        return []
    flat = np.fromiter(chain.from_iterable(reps), dtype=np.int64, count=2 * len(reps))
    mis = flat[0::2]
    cut = np.flatnonzero(mis[1:] != mis[:-1]) + 1
    run_start = np.concatenate(([0], cut, [mis.size])).astype(np.int64)
    run_model = mis[run_start[:-1]]
    holds = state.holds
    by_model = holds.by_model
    closed_ptr = np.zeros(run_model.size + 1, dtype=np.int64)
    closed: list[int] = []
    if any(by_model.values()):
        for r, mi in enumerate(run_model.tolist()):
            gs = by_model.get(mi)
            if gs:
                closed.extend(gs)
            closed_ptr[r + 1] = len(closed)
    closed_gpus = np.asarray(closed, dtype=np.int64)
    t = _tables(index)
    assert state.rows.shape[1] == ROW and state.rows.flags.c_contiguous
    out = _place_runs(
        run_model,
        run_start,
        closed_ptr,
        closed_gpus,
        state.rows,
        state.count,
        state.open_slack,
        state.mem_free0,
        holds.every,
        t["inc"],
        t["cap"],
        t["ev_start"],
        t["ev_off"],
        t["ev_add"],
        t["ev_div"],
        t["ev_lim"],
        t["uniform"],
        t["min_share"],
        t["min_mem"],
        t["restricted"],
        t["elig_rows"],
        t["elig_kind"],
        t["gpu_class"],
        t["class_ptr"],
        t["class_gpus"],
        t["empty_load"],
        t["slack_floor"],
        t["mem_floor"],
        t["levels"],
        t["eps"],
    )
    return _record(state, reps, out)


def _record(state: PackState, reps: Sequence[Replica], out: npt.NDArray[np.int64]) -> list[Replica]:
    """The Python-side bookkeeping of what the kernel placed (its arrays are already updated):
    ``where``, ``residents``, ``holds`` and the caches of ``PackState``. Returns the replicas
    left, in order."""
    left: list[Replica] = []
    where, residents = state.where, state.residents
    by_model, by_gpu = state.holds.by_model, state.holds.by_gpu
    for rep, g in zip(reps, out.tolist(), strict=True):
        if g < 0:
            left.append(rep)
            continue
        where[rep] = g
        residents[g].add(rep)
        mi = rep[0]
        ms = by_model.get(mi)
        if ms is None:
            ms = by_model[mi] = set()
        ms.add(g)
        gm = by_gpu.get(g)
        if gm is None:
            gm = by_gpu[g] = set()
        gm.add(mi)
    state._busy_ids = None
    state._act_stale = True
    count = state.count
    if len(state.empty_heaps) == 1:
        state.empty_heaps[0] = np.flatnonzero(count == 0).tolist()
    else:
        empty = count == 0
        gc = state.index.gpu_class
        for k in range(len(state.empty_heaps)):
            state.empty_heaps[k] = np.flatnonzero(empty & (gc == k)).tolist()
    return left
