"""Compiled pricing kernels of the configuration column generation (``colgen``).

``price_kernel`` (``_price_levels``): heuristic pricing, per duty-cycle level, of the
configurations worth most at given duals: exact enumeration of two- and three-member columns
(``_triples``) and seeded greedy columns in several time/memory orders improved by
drop-and-refill moves (``_fill``); it keeps, per model, the most valuable column containing
it. ``upper_kernel`` (``_upper_levels``): per level a cheap, valid upper bound on the best
configuration's value (fractional surrogate knapsacks), which spares exact pricing of levels
that cannot price out. Both use the engine's float fit test (time within the level times
``1 + EPS``, memory within capacity plus ``EPS``).

Callers: ``colgen`` only. numba compiles the kernels on first call (about 10 s, then cached on
disk); when numba cannot load (e.g. no writable cache directory) the same functions run as
plain Python, and ``colgen`` then tries only a few seeds (``COMPILED`` is False). Pure: no I/O
beyond numba's cache; must not decide validity (``colgen`` re-checks every column).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

WIDTH = 64  # the most members a heuristic column gets (a GPU rarely holds more than 10)
GREEDY_MIXES = np.asarray([0.5, 0.0, 1.0])  # time/memory mixes ordering the greedy columns
SURROGATES = np.linspace(0.0, 1.0, 11)  # time/memory mixes of the cheap pricing bound


def _compiled(fn: Callable[..., Any]) -> tuple[Callable[..., Any], bool]:
    """``fn`` compiled by numba (cached on disk), or ``fn`` itself when numba cannot load
    (e.g. no writable cache directory: it raises when the cached function is declared) or
    ``NUMBA_DISABLE_JIT`` is set (then the functions run as plain Python, slowly)."""
    try:
        from numba import config, njit

        if getattr(config, "DISABLE_JIT", False):
            return fn, False
        return njit(cache=True)(fn), True
    except Exception:
        return fn, False


def _fill(
    order: Any,
    n: int,
    lv: int,
    busy: Any,
    mem: Any,
    duals: Any,
    lim: float,
    cap: float,
    t_min: float,
    m_min: float,
    cols: Any,
    size: int,
    inc: Any,
    skip: int,
) -> tuple[int, float, float]:
    """Add the candidates of ``order[:n]`` (not in the column, not ``skip``) to the column
    ``cols[:size]`` while they fit; (new size, time used, memory used)."""
    tsum = 0.0
    msum = 0.0
    for i in range(size):
        tsum += busy[cols[i], lv]
        msum += mem[cols[i], lv]
    for j in range(n):
        if size == cols.size or tsum + t_min > lim or msum + m_min > cap:
            break
        k = order[j]
        if inc[k] or k == skip:
            continue
        if tsum + busy[k, lv] <= lim and msum + mem[k, lv] <= cap:
            cols[size] = k
            inc[k] = True
            size += 1
            tsum += busy[k, lv]
            msum += mem[k, lv]
    return size, tsum, msum


def _price_levels(
    ok: Any,
    busy: Any,
    mem: Any,
    duals: Any,
    lim: Any,
    cap: float,
    max_seeds: int,
    pairs: bool,
    mixes: Any,
    best_val: Any,
    best_cols: Any,
    level_val: Any,
) -> None:
    """Heuristic pricing. With ``pairs``, ``_triples`` first; then per level and time/memory
    mix, every candidate (at most ``max_seeds``, best dual per unit of mixed share first)
    seeds a column that is filled in that order while the engine's fit test passes, then
    improved by drop-and-refill moves (drop a member other than the seed, refill in order;
    kept when the value rises). ``best_val[k]`` / ``best_cols[k]`` (-1 padded) get the most
    valuable column containing ``k``, ``level_val[l]`` the best value at level ``l``."""
    n_models, n_levels = busy.shape
    width = best_cols.shape[1]
    cols = np.empty(width, dtype=np.int64)
    trial = np.empty(width, dtype=np.int64)
    inc = np.zeros(n_models, dtype=np.bool_)
    cand = np.empty(n_models, dtype=np.int64)
    key = np.empty(n_models, dtype=np.float64)
    for lv in range(n_levels):
        n = 0
        for k in range(n_models):
            if ok[k, lv] and duals[k] > 1e-9 and busy[k, lv] <= lim[lv] and mem[k, lv] <= cap:
                cand[n] = k
                n += 1
        if n == 0:
            continue
        t_min = np.inf
        m_min = np.inf
        for j in range(n):
            t_min = min(t_min, busy[cand[j], lv])
            m_min = min(m_min, mem[cand[j], lv])
        if pairs:
            _triples(cand, n, lv, busy, mem, duals, lim[lv], cap, best_val, best_cols, level_val)
        for mix in mixes:
            for j in range(n):
                k = cand[j]
                w = mix * busy[k, lv] / lim[lv] + (1.0 - mix) * mem[k, lv] / cap
                key[j] = -duals[k] / (w + 1e-12)
            order = cand[:n][np.argsort(key[:n], kind="mergesort")]
            for s in range(min(n, max_seeds)):
                cols[0] = order[s]
                inc[order[s]] = True
                size, _, _ = _fill(
                    order, n, lv, busy, mem, duals, lim[lv], cap, t_min, m_min, cols, 1, inc, -1
                )
                value = 0.0
                for i in range(size):
                    value += duals[cols[i]]
                p = 1
                while p < size:  # drop-and-refill local search
                    drop = cols[p]
                    tsize = 0
                    for i in range(size):
                        if i != p:
                            trial[tsize] = cols[i]
                            tsize += 1
                    inc[drop] = False
                    tsize, _, _ = _fill(
                        order, n, lv, busy, mem, duals, lim[lv], cap, t_min, m_min, trial,
                        tsize, inc, drop,
                    )  # fmt: skip
                    tval = 0.0
                    for i in range(tsize):
                        tval += duals[trial[i]]
                    if tval > value + 1e-12:
                        cols[:tsize] = trial[:tsize]
                        size = tsize
                        value = tval
                        p = 1
                    else:
                        for i in range(size - 1, tsize):
                            inc[trial[i]] = False
                        inc[drop] = True
                        p += 1
                level_val[lv] = max(level_val[lv], value)
                for i in range(size):
                    k = cols[i]
                    inc[k] = False
                    if value > best_val[k]:
                        best_val[k] = value
                        best_cols[k, :size] = cols[:size]
                        best_cols[k, size:] = -1


def _triples(
    cand: Any,
    n: int,
    lv: int,
    busy: Any,
    mem: Any,
    duals: Any,
    lim: float,
    cap: float,
    best_val: Any,
    best_cols: Any,
    level_val: Any,
) -> None:
    """Every pair of candidates that fits, completed by the most valuable third member that
    still fits (prefix maxima over candidates sorted by time: the three best, so that one is
    neither member of the pair): exact over columns of two or three members where memory is
    not the binding capacity, which is where a ratio greedy goes wrong (shares near 1/2, 1/3)."""
    order = cand[:n][np.argsort(busy[cand[:n], lv], kind="mergesort")]
    t = np.empty(n)
    top = np.full((n, 3), -1, dtype=np.int64)  # best three (by dual) among order[:i + 1]
    for i in range(n):
        k = order[i]
        t[i] = busy[k, lv]
        if i > 0:
            top[i] = top[i - 1]
        x = i
        for r in range(3):
            y = top[i, r]
            if y < 0 or duals[order[x]] > duals[order[y]]:
                top[i, r] = x
                x = y
                if x < 0:
                    break
    d_max = duals[order[top[n - 1, 0]]]
    width = best_cols.shape[1]
    for a in range(n):
        ka = order[a]
        for b in range(a + 1, n):
            kb = order[b]
            ts = t[a] + t[b]
            if ts > lim:
                break
            ms = mem[ka, lv] + mem[kb, lv]
            value = duals[ka] + duals[kb]
            if ms > cap or value + d_max <= 1.0:
                continue
            room = lim - ts
            hi = np.searchsorted(t, room, side="right") - 1
            third = -1
            if hi >= 0:
                for r in range(3):
                    x = top[hi, r]
                    if x >= 0 and x != a and x != b and ms + mem[order[x], lv] <= cap:
                        third = order[x]
                        break
            if third >= 0:
                value += duals[third]
            if value <= 1.0:
                continue
            level_val[lv] = max(level_val[lv], value)
            size = 3 if third >= 0 else 2
            for k in (ka, kb, third):
                if k >= 0 and value > best_val[k]:
                    best_val[k] = value
                    best_cols[k, :width] = -1
                    best_cols[k, 0] = ka
                    best_cols[k, 1] = kb
                    if size == 3:
                        best_cols[k, 2] = third


def _upper_levels(
    ok: Any, busy: Any, mem: Any, duals: Any, lim: Any, cap: float, mixes: Any, out: Any
) -> None:
    """Per level an upper bound on the best configuration's dual value: the fractional
    knapsack over ``mix * time / level + (1 - mix) * memory / capacity <= 1`` (a surrogate of
    the two capacities every configuration meets), the least over ``mixes``."""
    n_models, n_levels = busy.shape
    cand = np.empty(n_models, dtype=np.int64)
    w = np.empty(n_models, dtype=np.float64)
    key = np.empty(n_models, dtype=np.float64)
    for lv in range(n_levels):
        n = 0
        for k in range(n_models):
            if ok[k, lv] and duals[k] > 0.0 and busy[k, lv] <= lim[lv] and mem[k, lv] <= cap:
                cand[n] = k
                n += 1
        best = np.inf
        for mix in mixes:
            for j in range(n):
                k = cand[j]
                w[j] = max(mix * busy[k, lv] / lim[lv] + (1.0 - mix) * mem[k, lv] / cap, 1e-300)
                key[j] = -duals[k] / w[j]
            order = np.argsort(key[:n])
            room = 1.0
            value = 0.0
            for j in order:
                if w[j] <= room:
                    room -= w[j]
                    value += duals[cand[j]]
                else:
                    value += duals[cand[j]] * room / w[j]
                    break
            best = min(best, value)
        out[lv] = 0.0 if n == 0 else best * (1 + 1e-9) + 1e-9


_fill = _compiled(_fill)[0]
_triples = _compiled(_triples)[0]
price_kernel, COMPILED = _compiled(_price_levels)
upper_kernel = _compiled(_upper_levels)[0]


def warm_up() -> None:
    """Compile (or load from numba's cache) both kernels on a tiny input, so that the first
    timed plan does not pay for it (about 10 s on a fresh install, well under 1 s cached)."""
    ok = np.ones((2, 2), dtype=np.bool_)
    busy = np.full((2, 2), 0.4)
    mem = np.full((2, 2), 1.0)
    duals = np.full(2, 0.6)
    lim = np.asarray([1.0, 2.0])
    best_cols = np.full((2, WIDTH), -1, dtype=np.int64)
    price_kernel(
        ok, busy, mem, duals, lim, 10.0, 2, True, GREEDY_MIXES,
        np.zeros(2), best_cols, np.zeros(2),
    )  # fmt: skip
    upper_kernel(ok, busy, mem, duals, lim, 10.0, SURROGATES, np.zeros(2))
