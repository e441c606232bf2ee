"""Configuration-LP lower bound on GPUs (column generation), the tightest bound we compute.

A GPU runs at one duty-cycle level ``l`` and hosts a *configuration*: a set of models (one
replica each; replicas of a model need distinct GPUs) that every member allows at ``l`` and
whose busy times at ``l`` sum to at most ``l`` and memories to at most the GPU's capacity. Any
plan over the engine's levels is a multiset of configurations covering every model ``m`` at
least ``n_m`` times (its replica count), so the LP

    min sum_p x_p   s.t.   sum_{p contains m} x_p >= n_m  for every m,   x >= 0

bounds the number of GPUs from below (Gilmore-Gomory). It is solved by column generation:
GLOP solves the master over the configurations found so far; CP-SAT prices one 2-D knapsack per
level (maximise the duals of the members within the time and memory capacity). Whenever the
search stops, the bound returned is Farley's ``sum_m n_m pi_m / kappa`` where ``kappa`` is an
upper bound on the best configuration's dual value (CP-SAT's proven bound), valid at every
iteration; once no configuration prices out, it is the LP optimum.

Validity: the pricing knapsack is a relaxation (weights rounded down to integer microseconds
and MiB, capacities rounded up, duals rounded with their error added to ``kappa``), so it never
misses a real configuration; the final ceiling subtracts a 1e-6 relative tolerance for the
LP's floating-point duals. The bound is over the engine's 30 duty-cycle levels (as every other
bound here). Applies to single-GPU replicas on GPUs of one capacity without type or selector
restrictions (the benchmark instances); returns 0 otherwise. Callers: ``planner.
tight_lower_bound``. Pure: no I/O; the clock is injectable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from ortools.linear_solver import pywraplp
from ortools.sat.python import cp_model

from stowplan.placement.capacity import EPS
from stowplan.placement.errors import SolverFailed
from stowplan.placement.packing import LEVELS, PackIndex

DUAL_SCALE = 1_000_000  # duals are priced as integers in millionths
PRICE_TIME_S = 2.0  # per knapsack; the proven bound is used if it stops early


def configuration_bound(
    index: PackIndex,
    models: Sequence[int],
    time_limit_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Lower bound on the GPUs the replicas of ``models`` need (0 when it does not apply)."""
    if not models or index.uniform_cap is None or bool(index.restricted[list(models)].any()):
        return 0
    deadline = clock() + time_limit_s
    mats = index.mats
    ms = np.asarray(sorted(models), dtype=np.intp)
    counts = np.asarray([index.models[m].replicas for m in ms], dtype=float)
    ok = mats.ok[ms]  # (models, levels)
    busy_us = np.floor(mats.busy_ms[ms] * 1000.0)
    mem_mib = np.floor(mats.memory_mib[ms])
    cap_mib = math.ceil(float(index.uniform_cap) + EPS)
    level_us = [math.ceil(float(lv) * 1000.0 * (1 + EPS)) for lv in LEVELS]
    columns: list[frozenset[int]] = [frozenset([k]) for k in range(len(ms))]
    seen = set(columns)
    best = 0.0
    while True:
        duals = _master(columns, counts)
        kappa = 1.0
        added = 0
        for lv in range(len(LEVELS)):
            members = np.flatnonzero(ok[:, lv] & (duals > 1e-9))
            if members.size == 0:
                continue
            found, upper = _price(
                members, duals, busy_us[:, lv], mem_mib[:, lv], level_us[lv], cap_mib
            )
            kappa = max(kappa, upper)
            if (
                found is not None
                and float(duals[list(found)].sum()) > 1.0 + 1e-7
                and found not in seen
            ):
                seen.add(found)
                columns.append(found)
                added += 1
        best = max(best, float(duals @ counts) / kappa)
        if added == 0 or clock() >= deadline:
            break
    return max(0, math.ceil(best * (1 - 1e-6) - 1e-9))


def _master(columns: list[frozenset[int]], counts: np.ndarray) -> np.ndarray:
    """Solve the restricted master LP; the duals of its cover rows (>= 0)."""
    lp = pywraplp.Solver.CreateSolver("GLOP")
    if lp is None:  # pragma: no cover - GLOP ships with OR-Tools
        raise SolverFailed("GLOP is not available")
    rows = [lp.Constraint(float(c), lp.infinity()) for c in counts]
    obj = lp.Objective()
    for col in columns:
        x = lp.NumVar(0.0, lp.infinity(), "")
        obj.SetCoefficient(x, 1.0)
        for k in col:
            rows[k].SetCoefficient(x, 1.0)
    obj.SetMinimization()
    if lp.Solve() != pywraplp.Solver.OPTIMAL:
        raise SolverFailed("GLOP found no optimum for the configuration LP")
    return np.maximum(0.0, np.asarray([r.dual_value() for r in rows]))


def _price(
    members: np.ndarray,
    duals: np.ndarray,
    busy_us: np.ndarray,
    mem_mib: np.ndarray,
    level_us: int,
    cap_mib: int,
) -> tuple[frozenset[int] | None, float]:
    """Best configuration at one level: (its members or None, an upper bound on its value)."""
    model = cp_model.CpModel()
    ys = [model.new_bool_var(f"y{k}") for k in members.tolist()]
    model.add(
        sum(int(busy_us[k]) * y for k, y in zip(members.tolist(), ys, strict=True)) <= level_us
    )
    model.add(
        sum(int(mem_mib[k]) * y for k, y in zip(members.tolist(), ys, strict=True)) <= cap_mib
    )
    weights = [round(float(duals[k]) * DUAL_SCALE) for k in members.tolist()]
    model.maximize(sum(w * y for w, y in zip(weights, ys, strict=True)))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_time_in_seconds = PRICE_TIME_S
    status = solver.solve(model)
    slack = 0.5 * len(ys) / DUAL_SCALE  # rounding error of the integer duals
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        if status == cp_model.INFEASIBLE:  # cannot happen: the empty set is feasible
            return None, 0.0
        return None, float(duals[members].sum())  # nothing proven: every member fits
    upper = solver.best_objective_bound / DUAL_SCALE + slack
    chosen = frozenset(k for k, y in zip(members.tolist(), ys, strict=True) if solver.value(y))
    return (chosen or None), upper
