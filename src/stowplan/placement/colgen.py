"""Column generation over GPU configurations: the tightest lower bound we compute, and plans
built from the configurations (price-and-branch).

A GPU runs at one duty-cycle level ``l`` and hosts a *configuration*: a set of models (one
replica each; replicas of a model need distinct GPUs) that every member allows at ``l`` and
whose busy times at ``l`` sum to at most ``l`` and memories to at most the GPU's capacity. Any
plan over the engine's levels is a multiset of configurations covering every model ``m`` at
least ``n_m`` times (its replica count), so the LP

    min sum_p x_p   s.t.   sum_{p contains m} x_p >= n_m  for every m,   x >= 0

bounds the number of GPUs from below (Gilmore-Gomory). GLOP solves the master over the
configurations found so far (seeded with the GPUs of a best-fit plan); new ones come from a
greedy knapsack per level (duals per unit of time and memory share, exact float fit test) and,
when greedy finds none, from CP-SAT solving the 2-D knapsack per level exactly. The bound is
Farley's ``sum_m n_m pi_m / kappa``, ``kappa`` an upper bound on the best configuration's dual
value (CP-SAT's proven bound), valid whenever all levels were priced exactly; once nothing
prices out it is the LP optimum. ``configuration_plan`` then solves the integer master over
the pool with CP-SAT (hinted with the best-fit GPUs, so never worse) and turns it into GPU sets.

Validity: the exact pricing knapsack is a relaxation (weights rounded down to integer
microseconds and MiB, capacities rounded up, duals rounded with their error added to
``kappa``); only configurations that pass the engine's float fit test enter the pool; the
ceiling subtracts a 1e-6 relative tolerance for GLOP's floating-point duals. Over the engine's
30 duty-cycle levels (as every bound here). Applies to single-GPU replicas on GPUs of one
capacity without type or selector restrictions and without node demands (the benchmark
instances); callers check ``applies``. Callers: ``planner``. Pure: no I/O; clock injectable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from ortools.linear_solver import pywraplp
from ortools.sat.python import cp_model

from stowplan.placement.capacity import EPS
from stowplan.placement.errors import SolverFailed
from stowplan.placement.packing import LEVELS, PackIndex

DUAL_SCALE = 1_000_000  # duals are priced as integers in millionths
PRICE_TIME_S = 2.0  # per exact knapsack; its proven bound is used if it stops early

Column = frozenset[int]  # positions in ``ColumnGeneration.models``


def applies(index: PackIndex, models: Sequence[int]) -> bool:
    """Whether the configuration model covers these models on this fleet."""
    return (
        bool(models)
        and index.uniform_cap is not None
        and index.nodes is None
        and not bool(index.restricted[list(models)].any())
    )


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
        self, deadline: float, clock: Callable[[], float] = time.monotonic, *, bound: bool = True
    ) -> None:
        """Generate columns until nothing prices out or the deadline passes. Greedy pricing
        first; when it finds nothing, exact pricing level by level (most promising first),
        stopping at the first level that yields a column; a round that finds none has priced
        every level exactly, which proves convergence and gives Farley's bound. With
        ``bound``, a run stopped by the deadline ends with one full exact round (it may
        overrun the deadline by that round)."""
        full_last = False
        while not self.converged and clock() < deadline:
            duals = self._master()
            full_last = False
            cols, values = self._greedy(duals)
            if self._add(cols):
                continue
            late = lambda: clock() >= deadline  # noqa: E731
            order = np.argsort(-values, kind="stable")
            cols, kappa = self._exact(duals, order, first=True, stop=late)
            if self._add(cols):
                continue
            added = 0
            if math.isinf(kappa) and not late():  # stopped at a column it cannot add
                cols, kappa = self._exact(duals, np.arange(len(LEVELS)), first=False, stop=late)
                added = self._add(cols)
            if math.isinf(kappa):  # the deadline cut the round short
                break
            self._note_bound(duals, kappa)  # every level was priced exactly
            full_last = True
            self.converged = added == 0  # nothing new can enter (Farley's bound stands)
        if bound and not self.converged and not full_last:
            duals = self._master()
            _, kappa = self._exact(duals, np.arange(len(LEVELS)), first=False)
            self._note_bound(duals, kappa)

    def _note_bound(self, duals: npt.NDArray[np.float64], kappa: float) -> None:
        if math.isfinite(kappa):
            self.bound = max(self.bound, float(duals @ self.counts) / max(1.0, kappa))

    def _add(self, cols: list[Column]) -> int:
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
        return np.maximum(0.0, np.asarray([r.dual_value() for r in rows]))

    def _greedy(
        self, duals: npt.NDArray[np.float64]
    ) -> tuple[list[Column], npt.NDArray[np.float64]]:
        """Per level, members by dual per unit of (time + memory) share, added while they fit:
        (the improving columns, the greedy value per level)."""
        out: list[Column] = []
        values = np.zeros(len(LEVELS))
        for lv, level_ms in enumerate(LEVELS.tolist()):
            ks = np.flatnonzero(self.ok[:, lv] & (duals > 1e-9))
            if ks.size == 0:
                continue
            t, m = self.busy[ks, lv], self.mem[ks, lv]
            order = np.argsort(-duals[ks] / (t / level_ms + m / self.cap + 1e-12), kind="stable")
            tsum = msum = value = 0.0
            chosen: list[int] = []
            for j in order.tolist():
                if tsum + t[j] <= self.lim_ms[lv] and msum + m[j] <= self.cap + EPS:
                    tsum, msum = tsum + t[j], msum + m[j]
                    value += float(duals[ks[j]])
                    chosen.append(int(ks[j]))
            values[lv] = value
            if value > 1.0 + 1e-7:
                out.append(frozenset(chosen))
        return out, values

    def _exact(
        self,
        duals: npt.NDArray[np.float64],
        levels: npt.NDArray[np.intp],
        *,
        first: bool,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[list[Column], float]:
        """Exact pricing of ``levels`` in that order: (improving columns, an upper bound on the
        best configuration's value, inf unless every level was priced). ``first``: stop at the
        first level with an improving column; ``stop()`` true: stop before the next level."""
        cap = math.ceil(self.cap + EPS)
        out: list[Column] = []
        kappa = 0.0
        for lv in levels.tolist():
            if stop():
                return out, math.inf
            ks = np.flatnonzero(self.ok[:, lv] & (duals > 1e-9))
            if ks.size == 0:
                continue
            limit = math.ceil(float(LEVELS[lv]) * 1000.0 * (1 + EPS))
            col, upper = _knapsack(
                duals[ks],
                np.floor(self.busy[ks, lv] * 1000.0),
                np.floor(self.mem[ks, lv]),
                limit,
                cap,
            )
            kappa = max(kappa, upper)
            if col and float(duals[ks[col]].sum()) > 1.0 + 1e-7:
                out.append(frozenset(int(k) for k in ks[col].tolist()))
                if first:
                    return out, math.inf
        return out, kappa

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
    time_us: npt.NDArray[np.float64],
    mem_mib: npt.NDArray[np.float64],
    limit_us: int,
    cap_mib: int,
) -> tuple[list[int], float]:
    """Max-value subset within both capacities: (its positions, an upper bound on the max)."""
    model = cp_model.CpModel()
    ys = [model.new_bool_var(f"y{k}") for k in range(len(values))]
    model.add(sum(int(t) * y for t, y in zip(time_us.tolist(), ys, strict=True)) <= limit_us)
    model.add(sum(int(m) * y for m, y in zip(mem_mib.tolist(), ys, strict=True)) <= cap_mib)
    weights = [round(float(v) * DUAL_SCALE) for v in values.tolist()]
    model.maximize(sum(w * y for w, y in zip(weights, ys, strict=True)))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_time_in_seconds = PRICE_TIME_S
    status = solver.solve(model)
    slack = 0.5 * len(ys) / DUAL_SCALE  # rounding error of the integer duals
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return [], float(values.sum())  # nothing proven: every member might fit
    chosen = [k for k, y in enumerate(ys) if solver.value(y)]
    return chosen, solver.best_objective_bound / DUAL_SCALE + slack


def configuration_bound(
    index: PackIndex,
    models: Sequence[int],
    time_limit_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Lower bound on the GPUs the replicas of ``models`` need (0 when it does not apply)."""
    if not applies(index, models):
        return 0
    cg = ColumnGeneration(index, models)
    cg.run(clock() + time_limit_s, clock)
    return cg.lower_bound()
