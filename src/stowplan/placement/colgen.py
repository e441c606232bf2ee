"""Column generation over GPU configurations: the tightest lower bound we compute, and plans
built from the configurations (price-and-branch).

A GPU runs at one duty-cycle level ``l`` and hosts a *configuration*: a set of models (one
replica each; replicas of a model need distinct GPUs) that every member allows at ``l`` and
whose busy times at ``l`` sum to at most ``l`` and memories to at most the GPU's capacity. Any
plan over the engine's levels is a multiset of configurations covering every model ``m`` at
least ``n_m`` times (its replica count), so the LP

    min sum_p x_p   s.t.   sum_{p contains m} x_p >= n_m  for every m,   x >= 0

bounds the number of GPUs from below (Gilmore-Gomory). GLOP solves the master over the
configurations found so far (seeded with the GPUs of a best-fit plan and with greedy columns
that fill a GPU at the volume duals; kept between rounds, no presolve, so it warm-starts).
Pricing per round (``colgen_kernel``): every two- and three-member column completed exactly
by time, and seeded greedy columns in three time/memory orders improved by drop-and-refill;
every distinct improving column enters (the best one containing each model, up to half the
number of models per round). Duals are stabilised (Wentges smoothing towards the duals with
the best estimated bound, starting from the volume duals). When the heuristics find nothing,
CP-SAT solves the 2-D knapsack exactly, level by level in decreasing order of a cheap bound
(fractional surrogate knapsacks) and only where that bound exceeds one. The bound is Farley's
``sum_m n_m pi_m / kappa``, ``kappa`` an upper bound on the best configuration's dual value
(the cheap bound after every round, CP-SAT's proven bound where it ran), valid at any point;
once nothing prices out it is the LP optimum. Above ``GROUP_MODELS`` models one cold LP
does not converge in a minute (GLOP re-solves of 2 s), so ``grouped_bound`` first solves the
LPs of model groups, then the whole LP warm-started from their near-zero reduced-cost columns
and duals, with exact pricing as soon as the greedy stalls (it misses memory-bound columns of
2-4 members); its bound is the whole LP's Farley bound, as valid as any here. ``dive``
rounds the LP (take ``floor(x)``, re-solve for the rest) and ``integer_plan`` solves the
integer master over the pool with CP-SAT (hinted, so never worse than its hint); both give
GPU sets (price-and-branch).

Validity: the exact pricing knapsack is a relaxation (weights rounded down to integer
nanoseconds and KiB, capacities rounded up, duals rounded with their error added to
``kappa``; a set it returns that misses the float fit test by more than float noise is cut
off with its supersets and the knapsack re-solved); the cheap bound is a fractional
relaxation with a 1e-9 relative margin; only configurations that pass the engine's float fit
test enter the pool; the ceiling subtracts a 1e-6 relative tolerance for GLOP's
floating-point duals. Over the engine's 30 duty-cycle levels (as every bound here). Applies
to single-GPU replicas on GPUs of one capacity without type or selector restrictions and
without node demands (the benchmark instances); callers check ``applies``. Callers:
``planner``. Pure: no I/O; clock injectable.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from ortools.linear_solver import pywraplp
from ortools.sat.python import cp_model

from stowplan.placement.capacity import EPS
from stowplan.placement.colgen_kernel import (
    COMPILED,
    GREEDY_MIXES,
    SURROGATES,
    WIDTH,
    price_kernel,
    upper_kernel,
)
from stowplan.placement.errors import SolverFailed
from stowplan.placement.packindex import LEVELS, PackIndex

DUAL_SCALE = 1_000_000  # duals are priced as integers in millionths
PRICE_TIME_S = 2.0  # per exact knapsack; its proven bound is used if it stops early
GLOP_PARAMS = "use_preprocessing: false solve_dual_problem: NEVER_DO"
SEED_FULL = 0.9  # first columns: those the greedy fills to this much of the volume duals
SMOOTHING = 0.5  # Wentges: price at SMOOTHING * centre + (1 - SMOOTHING) * LP duals
GROUP_MODELS = 1500  # price-and-branch solves larger instances in groups of this many models
IMPROVING = 1.0 + 1e-7  # a configuration prices out when its dual value exceeds this
GROUP_SHARE = 0.4  # grouped_bound: the share of its time for the group LPs
GROUP_KEEP = 0.005  # grouped_bound: group columns kept when worth at least 1 - this
STALL_PER = 5  # grouped_bound: greedy rounds adding under 20 % of the models go exact
WHOLE_SHARE = 0.8  # grouped_bound: exact rounds start before this share of its time

Column = frozenset[int]  # positions in ``ColumnGeneration.models``


def applies(index: PackIndex, models: Sequence[int]) -> bool:
    """Whether the configuration model covers these models on this fleet."""
    return (
        bool(models)
        and index.uniform_cap is not None
        and index.nodes is None
        and not bool(index.restricted[list(models)].any())
    )


def model_groups(index: PackIndex, models: Sequence[int], most: int) -> list[list[int]]:
    """``models`` in groups of at most ``most`` (about equal sizes) that share duty-cycle
    levels: sorted by the longest level each allows, then the shortest, then the smallest
    share. For plans only: configurations across groups are lost, so the sum of the groups'
    bounds is no bound of the whole."""
    if len(models) <= most:
        return [list(models)]
    ok = index.mats.ok[list(models)]
    top = np.where(ok.any(axis=1), ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), 0)
    low = np.argmax(ok, axis=1)
    order = np.lexsort((index.min_share[list(models)], low, top))
    parts = math.ceil(len(models) / most)
    chunks = np.array_split(np.asarray(models, dtype=np.intp)[order], parts)
    return [sorted(c.tolist()) for c in chunks]


class ColumnGeneration:
    """The configuration pool and the best bound so far for the replicas of ``models``."""

    def __init__(
        self, index: PackIndex, models: Sequence[int], seeds: Sequence[Sequence[int]] = ()
    ) -> None:
        self.models = np.asarray(sorted(models), dtype=np.intp)
        pos = {int(m): k for k, m in enumerate(self.models.tolist())}
        mats = index.mats
        self.counts = np.asarray([index.models[m].replicas for m in self.models], dtype=float)
        self.ok = mats.ok[self.models]
        self.busy = mats.busy_ms[self.models]
        self.mem = mats.memory_mib[self.models]
        self.cap = float(index.uniform_cap or 0.0)
        self.lim_ms = LEVELS * (1 + EPS)
        self.pool: list[Column] = [frozenset([k]) for k in range(len(self.models))]
        self.seen = set(self.pool)
        for gpu_models in seeds:  # e.g. the GPUs of a best-fit plan
            col = frozenset(pos[m] for m in gpu_models if m in pos)
            if col and col not in self.seen and self.fits(col):
                self.seen.add(col)
                self.pool.append(col)
        self.bound = 0.0
        self.converged = False
        self._lp: pywraplp.Solver | None = None
        self._rows: list[pywraplp.Constraint] = []
        self._in_lp = 0  # pool columns already in the LP
        self.lp_value = math.inf  # the restricted master's optimum (after a solve)
        self.uncovered = self.counts.astype(int)  # replicas ``dive`` left uncovered
        self.max_columns = max(30, len(self.models) // 2)  # columns added per greedy round
        # stabilisation centre: starts at the volume duals (each model's smallest share of a
        # GPU), a dual solution whose Farley estimate is the volume bound
        share = np.maximum(self.busy / LEVELS, self.mem / max(self.cap, EPS))
        self.centre = np.where(self.ok, share, np.inf).min(axis=1, initial=np.inf)
        self.centre[~np.isfinite(self.centre)] = 0.0
        self.centre_score = float(self.centre @ self.counts)
        if SEED_FULL:
            self._add(self._greedy(self.centre, self.centre, SEED_FULL))

    def fits(self, col: Column) -> bool:
        """The engine's float fit test: some level every member allows has room for all."""
        ks = list(col)
        ok = self.ok[ks].all(axis=0)
        ok &= self.busy[ks].sum(axis=0) <= self.lim_ms
        ok &= self.mem[ks].sum(axis=0) <= self.cap + EPS
        return bool(ok.any())

    def lower_bound(self) -> int:
        """GPUs any plan over the levels needs (0 before the first exact pricing round)."""
        return max(0, math.ceil(self.bound * (1 - 1e-6) - 1e-9))

    def run(
        self,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        bound: bool = True,
        stall: int = 0,
    ) -> None:
        """Generate columns until nothing prices out or the deadline passes. Each round
        solves the master, notes Farley's bound with the cheap pricing bound, and adds every
        distinct improving column the seeded greedy finds at smoothed duals (Wentges; at the
        LP duals when the smoothed ones find none). When greedy finds nothing, exact pricing
        level by level (highest cheap bound first, levels whose cheap bound cannot exceed one
        skipped), stopping at the first level that yields a column; a round that finds none
        proves convergence and the bound is the LP optimum. With ``bound``, a run stopped by
        the deadline ends with one exact round for the bound (it may overrun the deadline by
        that round). ``stall``: a greedy round adding at most this many columns counts as
        finding nothing (exact pricing follows)."""
        exact_last = False
        while not self.converged and clock() < deadline:
            duals = self._master()
            exact_last = False
            self._note_bound(duals, float(self._upper(duals).max(initial=0.0)))
            greedy = 0  # columns the greedy added this round (at most ``stall``)
            if SMOOTHING > 0:
                sep = SMOOTHING * self.centre + (1 - SMOOTHING) * duals
                greedy = self._add(self._greedy(sep, duals))
                if greedy > stall:
                    continue  # a misprice (nothing) falls through to the LP duals
            greedy += self._add(self._greedy(duals, duals))
            if greedy > stall:
                continue
            late = lambda: clock() >= deadline  # noqa: E731
            cols, kappa, complete = self._exact(duals, first=True, stop=late)
            self._note_bound(duals, kappa)
            exact_last = complete
            if self._add(cols) or greedy:
                continue
            self.converged = complete  # nothing new can enter (Farley's bound stands)
            break
        if bound and not self.converged and not exact_last:
            duals = self._master()
            _, kappa, _ = self._exact(duals, first=False)
            self._note_bound(duals, kappa)

    def _note_bound(self, duals: npt.NDArray[np.float64], kappa: float) -> None:
        if math.isfinite(kappa):
            self.bound = max(self.bound, float(duals @ self.counts) / max(1.0, kappa))

    def add_columns(self, cols: Sequence[Column]) -> int:
        """Add the configurations among ``cols`` that fit and are new; how many."""
        return self._add(cols)

    def _add(self, cols: Sequence[Column]) -> int:
        added = 0
        for col in cols:
            if col not in self.seen and self.fits(col):
                self.seen.add(col)
                self.pool.append(col)
                added += 1
        return added

    def _master(self) -> npt.NDArray[np.float64]:
        """Solve the restricted master LP (kept between calls: new columns are added as new
        variables, so GLOP re-solves incrementally); the duals of its cover rows (>= 0)."""
        if self._lp is None:
            lp = pywraplp.Solver.CreateSolver("GLOP")
            if lp is None:  # pragma: no cover - GLOP ships with OR-Tools
                raise SolverFailed("GLOP is not available")
            # warm starts need the model as built: no presolve, never the dual problem
            lp.SetSolverSpecificParametersAsString(GLOP_PARAMS)
            self._lp = lp
            self._rows = [lp.Constraint(float(c), lp.infinity()) for c in self.counts]
            lp.Objective().SetMinimization()
        lp, rows = self._lp, self._rows
        obj = lp.Objective()
        for col in self.pool[self._in_lp :]:
            x = lp.NumVar(0.0, lp.infinity(), "")
            obj.SetCoefficient(x, 1.0)
            for k in col:
                rows[k].SetCoefficient(x, 1.0)
        self._in_lp = len(self.pool)
        if lp.Solve() != pywraplp.Solver.OPTIMAL:
            raise SolverFailed("GLOP found no optimum for the configuration LP")
        self.lp_value = lp.Objective().Value()
        duals: npt.NDArray[np.float64] = np.maximum(
            0.0, np.asarray([r.dual_value() for r in rows], dtype=np.float64)
        )
        return duals

    def _greedy(
        self,
        price: npt.NDArray[np.float64],
        duals: npt.NDArray[np.float64],
        threshold: float = IMPROVING,
    ) -> list[Column]:
        """Seeded greedy pricing at ``price`` (``_price_levels``): the distinct columns worth
        more than one at ``duals``, most valuable first, at most ``max_columns``."""
        n = len(self.models)
        best_val = np.zeros(n)
        best_cols = np.full((n, WIDTH), -1, dtype=np.int64)
        level_val = np.zeros(len(LEVELS))
        seeds = n if COMPILED else 4
        price_kernel(
            self.ok, self.busy, self.mem, price, self.lim_ms, self.cap + EPS, seeds, COMPILED,
            GREEDY_MIXES, best_val, best_cols, level_val,
        )  # fmt: skip
        score = float(price @ self.counts) / max(1.0, float(level_val.max(initial=0.0)))
        if score > self.centre_score:  # Wentges: the centre is the best (estimated) bound
            self.centre, self.centre_score = price.copy(), score
        found: dict[Column, float] = {}
        for k in np.flatnonzero(best_val > 1e-9).tolist():
            row = best_cols[k]
            members = row[row >= 0]
            value = float(duals[members].sum())
            if value > threshold:
                found[frozenset(members.tolist())] = value
        ranked = sorted(found, key=lambda c: -found[c])
        return ranked[: self.max_columns]

    def _upper(self, duals: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Per level an upper bound on the best configuration's value (``_upper_levels``)."""
        out = np.zeros(len(LEVELS))
        upper_kernel(
            self.ok, self.busy, self.mem, duals, self.lim_ms, self.cap + EPS, SURROGATES, out
        )
        return out

    def _over(self, ks: npt.NDArray[np.intp], lv: int, col: list[int]) -> bool:
        """Whether the members ``ks[col]`` miss level ``lv`` by more than float noise (so
        does every superset)."""
        lim, cap = float(self.lim_ms[lv]), self.cap + EPS
        return float(self.busy[ks[col], lv].sum()) > lim * (1 + 1e-12) or float(
            self.mem[ks[col], lv].sum()
        ) > cap * (1 + 1e-12)

    def _exact(
        self,
        duals: npt.NDArray[np.float64],
        *,
        first: bool,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[list[Column], float, bool]:
        """Exact pricing, levels by decreasing cheap bound (``_upper``) while that bound can
        exceed both one and the best value proven so far: (improving columns, an upper bound
        on the best configuration's value over all levels -- the proven bounds of the levels
        priced, the cheap bounds of the others --, whether every level was settled).
        ``first``: stop at the first level with a
        column that can enter the pool; ``stop()`` true: stop before the next level."""
        cap_kib = math.ceil((self.cap + EPS) * 1024.0)
        upper = self._upper(duals)
        out: list[Column] = []
        kappa = 1.0
        order = np.argsort(-upper, kind="stable").tolist()
        for i, lv in enumerate(order):
            if upper[lv] <= max(kappa, IMPROVING):
                break
            if stop() or (first and out):
                return out, max(kappa, float(upper[order[i:]].max())), False
            ks = np.flatnonzero(self.ok[:, lv] & (duals > 0.0))
            over = functools.partial(self._over, ks, lv)
            col, proven = _knapsack(
                duals[ks],
                np.floor(self.busy[ks, lv] * 1e6),
                np.floor(self.mem[ks, lv] * 1024.0),
                math.ceil(float(LEVELS[lv]) * 1e6 * (1 + EPS)),
                cap_kib,
                over,
            )
            kappa = max(kappa, min(proven, float(upper[lv])))
            if col and float(duals[ks[col]].sum()) > IMPROVING:
                found = frozenset(int(k) for k in ks[col].tolist())
                if found not in self.seen and self.fits(found):
                    out.append(found)
        return out, kappa, True

    def dive(self, deadline: float, clock: Callable[[], float] = time.monotonic) -> list[Column]:
        """Round the configuration LP (diving): solve the master for the replicas still
        uncovered, take every column ``floor(x)`` times (when none reaches one, every column
        at 0.6 or more, else the largest few), trim the taken columns to what is still needed,
        and repeat until every replica is covered or the deadline passes. The GPUs taken (a
        partial cover when stopped early; ``uncovered`` says what is left)."""
        self._master()  # every pool column in the LP
        lp, rows = self._lp, self._rows
        assert lp is not None
        xs = lp.variables()
        need = self.counts.astype(int)
        gpus: list[Column] = []
        try:
            while need.any() and clock() < deadline:
                for r, c in zip(rows, need.tolist(), strict=True):
                    r.SetLb(float(c))
                if lp.Solve() != pywraplp.Solver.OPTIMAL:
                    break
                x = np.asarray([v.solution_value() for v in xs])
                take = np.floor(x + 1e-6)
                if not take.any():
                    take = (x >= 0.6 - 1e-9).astype(float)
                if not take.any():  # the largest few (a re-solve per column is too slow)
                    top = np.argsort(-x, kind="stable")[: max(1, int(need.sum()) // 25)]
                    take[top[x[top] > 1e-9]] = 1.0
                    take[top[0]] = 1.0
                for j in np.flatnonzero(take).tolist():
                    for _ in range(int(take[j])):
                        keep = [k for k in self.pool[j] if need[k] > 0]
                        if not keep:
                            break
                        need[keep] -= 1
                        gpus.append(frozenset(keep))
        finally:
            for r, c in zip(rows, self.counts.tolist(), strict=True):
                r.SetLb(float(c))
        self.uncovered = need
        return gpus

    def integer_plan(self, hint: Sequence[Column], time_limit_s: float) -> list[Column] | None:
        """The fewest pool configurations covering every replica (CP-SAT, hinted with
        ``hint``), each trimmed so a model appears exactly ``n_m`` times; None if CP-SAT
        found nothing."""
        model = cp_model.CpModel()
        top = int(self.counts.max(initial=0))
        xs = [model.new_int_var(0, top, f"x{j}") for j in range(len(self.pool))]
        members: list[list[int]] = [[] for _ in range(len(self.models))]
        for j, col in enumerate(self.pool):
            for k in col:
                members[k].append(j)
        for k, js in enumerate(members):
            model.add(sum(xs[j] for j in js) >= int(self.counts[k]))
        model.minimize(sum(xs))
        where = {col: j for j, col in enumerate(self.pool)}
        uses = [0] * len(self.pool)
        for col in hint:
            if col in where:
                uses[where[col]] += 1
        for x, u in zip(xs, uses, strict=True):
            model.add_hint(x, u)
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.max_time_in_seconds = max(0.1, time_limit_s)
        if solver.solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        need = self.counts.astype(int).tolist()
        gpus: list[Column] = []
        for j, x in enumerate(xs):
            for _ in range(int(solver.value(x))):
                keep = [k for k in self.pool[j] if need[k] > 0]
                for k in keep:
                    need[k] -= 1
                if keep:
                    gpus.append(frozenset(keep))  # a subset of a fitting set still fits
        return gpus


def _knapsack(
    values: npt.NDArray[np.float64],
    time_ns: npt.NDArray[np.float64],
    mem_kib: npt.NDArray[np.float64],
    limit_ns: int,
    cap_kib: int,
    over: Callable[[list[int]], bool],
) -> tuple[list[int], float]:
    """Max-value subset within both capacities: (its positions, an upper bound on the max).
    The integer weights are rounded down, so a set it returns may still miss the float fit
    test; while ``over(set)`` says so, that set (and with it every superset) is cut off and
    the knapsack solved again (a few times)."""
    model = cp_model.CpModel()
    ys = [model.new_bool_var(f"y{k}") for k in range(len(values))]
    model.add(sum(int(t) * y for t, y in zip(time_ns.tolist(), ys, strict=True)) <= limit_ns)
    model.add(sum(int(m) * y for m, y in zip(mem_kib.tolist(), ys, strict=True)) <= cap_kib)
    weights = [round(float(v) * DUAL_SCALE) for v in values.tolist()]
    model.maximize(sum(w * y for w, y in zip(weights, ys, strict=True)))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_time_in_seconds = PRICE_TIME_S
    slack = 0.5 * len(ys) / DUAL_SCALE  # rounding error of the integer duals
    for _ in range(4):
        status = solver.solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return [], float(values.sum())  # nothing proven: every member might fit
        chosen = [k for k, y in enumerate(ys) if solver.value(y)]
        if not over(chosen):
            break
        model.add(sum(ys[k] for k in chosen) <= len(chosen) - 1)
    return chosen, solver.best_objective_bound / DUAL_SCALE + slack


def configuration_bound(
    index: PackIndex,
    models: Sequence[int],
    time_limit_s: float,
    clock: Callable[[], float] = time.monotonic,
    *,
    seeds: Sequence[Sequence[int]] = (),
) -> int:
    """Lower bound on the GPUs the replicas of ``models`` need (0 when it does not apply);
    ``seeds``: model sets that fit one GPU each (e.g. a plan's GPUs) to start the pool."""
    if not applies(index, models):
        return 0
    cg = ColumnGeneration(index, models, seeds)
    cg.run(clock() + time_limit_s, clock)
    return cg.lower_bound()


def grouped_bound(
    index: PackIndex,
    models: Sequence[int],
    time_limit_s: float,
    clock: Callable[[], float] = time.monotonic,
    *,
    seeds: Sequence[Sequence[int]] = (),
) -> int:
    """``configuration_bound`` for instances too large for one cold LP in the budget: first
    the LPs of ``model_groups`` (``GROUP_SHARE`` of the time, no bounds of their own), then
    column generation over the WHOLE model set, its pool seeded with the groups' columns
    whose dual value is within ``GROUP_KEEP`` of one (the rest would only slow GLOP down) and
    its stabilisation centre set to the groups' duals (concatenated), ending with one exact
    pricing round for Farley's bound (deadline ``WHOLE_SHARE`` of the time so that round fits);
    greedy rounds adding at most 1/``STALL_PER`` of the models count as stalled (exact pricing).
    The bound is the whole set's (the groups only warm-start it), so it is as valid as
    ``configuration_bound``'s. One group: ``configuration_bound``."""
    if not applies(index, models):
        return 0
    groups = model_groups(index, models, GROUP_MODELS)
    if len(groups) == 1:
        return configuration_bound(index, models, time_limit_s, clock, seeds=seeds)
    start = clock()
    pi = np.zeros(len(index.models))
    warm: list[list[int]] = []
    for i, group in enumerate(groups):
        cg = ColumnGeneration(index, group, seeds)
        left = start + GROUP_SHARE * time_limit_s - clock()
        cg.run(clock() + left / (len(groups) - i), clock, bound=False)
        duals = cg._master()
        pi[cg.models] = duals
        for col in cg.pool:
            ks = list(col)
            if len(ks) > 1 and float(duals[ks].sum()) >= 1.0 - GROUP_KEEP:
                warm.append([int(m) for m in cg.models[ks].tolist()])
    whole = ColumnGeneration(index, models, seeds)
    pos = {int(m): k for k, m in enumerate(whole.models.tolist())}
    whole.add_columns([frozenset(pos[m] for m in col) for col in warm])
    centre = pi[whole.models]
    score = float(centre @ whole.counts) / max(1.0, float(whole._upper(centre).max(initial=0.0)))
    if score > whole.centre_score:
        whole.centre, whole.centre_score = centre, score
    stall = max(10, len(whole.models) // STALL_PER)
    whole.run(start + WHOLE_SHARE * time_limit_s, clock, stall=stall)
    return whole.lower_bound()
