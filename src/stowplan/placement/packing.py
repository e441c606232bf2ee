"""Mutable packing state shared by best-fit, online mode and the LNS: who sits on which GPU.

``PackState`` keeps, for every GPU and every duty-cycle level, the summed busy time and memory of
its residents and whether every resident allows that level, so testing "does replica r fit on GPU
g at some level" is a vectorised numpy expression over all candidate GPUs. It is built once per
problem (``PackIndex``: compute once, read many) and is private to the placement package: it
never leaves ``plan()``, which returns frozen values. No I/O, no solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stowplan.placement.capacity import DUTY_LEVELS_MS, EPS, LevelCosts, level_costs
from stowplan.placement.models import Assignment, Gpu, ModelDemand, Problem
from stowplan.placement.verify import gpu_admits

LEVELS = np.asarray(DUTY_LEVELS_MS)
Replica = tuple[int, int]  # (model index, replica index)


@dataclass(frozen=True)
class PackIndex:
    """Per-problem read-only tables: GPUs, models, level costs and GPU eligibility."""

    problem: Problem
    gpus: tuple[Gpu, ...]
    gpu_pos: dict[tuple[str, int], int]
    models: tuple[ModelDemand, ...]
    model_pos: dict[str, int]
    costs: tuple[LevelCosts, ...]
    eligible: npt.NDArray[np.bool_]  # (models, gpus)
    cap_mib: npt.NDArray[np.float64]  # (gpus,) memory minus reserve
    min_share: npt.NDArray[np.float64]  # (models,) smallest time share over levels
    min_mem: npt.NDArray[np.float64]  # (models,) smallest memory over levels
    gpu_class: npt.NDArray[np.int64]  # (gpus,) GPUs with equal memory, type and labels

    @staticmethod
    def build(problem: Problem) -> PackIndex:
        gpus = problem.gpus
        models = problem.models
        eligible = np.zeros((len(models), len(gpus)), dtype=bool)
        for i, m in enumerate(models):
            if not m.gpu_type and not m.node_selector:
                eligible[i, :] = True
            else:
                eligible[i, :] = [gpu_admits(g, m) for g in gpus]
        cap = np.asarray([g.memory_mib - problem.memory_reserve_mib for g in gpus], dtype=float)
        costs = tuple(level_costs(m) for m in models)
        classes: dict[tuple[object, ...], int] = {}
        gpu_class = np.asarray(
            [
                classes.setdefault(
                    (g.memory_mib, g.gpu_type, tuple(sorted(g.labels.items()))), len(classes)
                )
                for g in gpus
            ],
            dtype=np.int64,
        )
        return PackIndex(
            problem=problem,
            gpus=gpus,
            gpu_pos={g.key: i for i, g in enumerate(gpus)},
            models=models,
            model_pos={m.name: i for i, m in enumerate(models)},
            costs=costs,
            eligible=eligible,
            cap_mib=cap,
            min_share=np.asarray([c.min_share() for c in costs]),
            min_mem=np.asarray([c.min_memory_mib() for c in costs]),
            gpu_class=gpu_class,
        )

    def size(self, mi: int) -> float:
        """Best-fit-decreasing key: the larger of a replica's smallest time and memory share."""
        c = self.costs[mi]
        elig = self.eligible[mi]
        if not c.feasible or not elig.any():
            return math.inf
        return max(c.min_share(), c.min_memory_mib() / float(self.cap_mib[elig].max()))


@dataclass
class PackState:
    """Residents per GPU plus per-level sums; mutate with ``add``/``remove`` only."""

    index: PackIndex
    busy: npt.NDArray[np.float64] = field(init=False)  # (gpus, levels)
    mem: npt.NDArray[np.float64] = field(init=False)
    blocked: npt.NDArray[np.int64] = field(init=False)  # residents that forbid the level
    count: npt.NDArray[np.int64] = field(init=False)  # (gpus,)
    holds: npt.NDArray[np.bool_] = field(init=False)  # (models, gpus)
    residents: list[set[Replica]] = field(init=False)
    where: dict[Replica, int] = field(init=False)
    slack: npt.NDArray[np.float64] = field(init=False)  # (gpus,) best free time share

    def __post_init__(self) -> None:
        g, n_levels = len(self.index.gpus), len(LEVELS)
        self.busy = np.zeros((g, n_levels))
        self.mem = np.zeros((g, n_levels))
        self.blocked = np.zeros((g, n_levels), dtype=np.int64)
        self.count = np.zeros(g, dtype=np.int64)
        self.holds = np.zeros((len(self.index.models), g), dtype=bool)
        self.residents = [set() for _ in range(g)]
        self.where = {}
        self.slack = np.ones(g)

    def copy(self) -> PackState:
        new = PackState(self.index)
        new.busy = self.busy.copy()
        new.mem = self.mem.copy()
        new.blocked = self.blocked.copy()
        new.count = self.count.copy()
        new.holds = self.holds.copy()
        new.residents = [set(s) for s in self.residents]
        new.where = dict(self.where)
        new.slack = self.slack.copy()
        return new

    def _update_slack(self, g: int) -> None:
        free = np.where(self.blocked[g] == 0, 1.0 - self.busy[g] / LEVELS, -1.0)
        self.slack[g] = float(free.max()) if self.count[g] else 1.0

    def prefilter(self, mi: int) -> npt.NDArray[np.bool_]:
        """GPUs that may fit a replica of model ``mi`` (cheap necessary conditions only):
        free time share at least its smallest share, memory at the lowest level fits."""
        return (self.slack >= self.index.min_share[mi] - 1e-9) & (
            self.mem[:, 0] + self.index.min_mem[mi] <= self.index.cap_mib + EPS
        )

    def add(self, rep: Replica, g: int) -> None:
        c = self.index.costs[rep[0]]
        self.busy[g] += c.busy_ms
        self.mem[g] += c.memory_mib
        self.blocked[g] += ~c.ok
        self.count[g] += 1
        self.holds[rep[0], g] = True
        self.residents[g].add(rep)
        self.where[rep] = g
        self._update_slack(g)

    def remove(self, rep: Replica) -> int:
        g = self.where.pop(rep)
        c = self.index.costs[rep[0]]
        self.busy[g] -= c.busy_ms
        self.mem[g] -= c.memory_mib
        self.blocked[g] -= ~c.ok
        self.count[g] -= 1
        self.holds[rep[0], g] = False
        self.residents[g].discard(rep)
        if self.count[g] == 0:  # wipe float drift
            self.busy[g] = 0.0
            self.mem[g] = 0.0
        self._update_slack(g)
        return g

    def loads(self, mi: int, cand: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """(len(cand), levels) load max(time share, memory share) after adding a replica of
        model ``mi``; inf where it does not fit at that level."""
        c = self.index.costs[mi]
        t2 = self.busy[cand] + c.busy_ms
        m2 = self.mem[cand] + c.memory_mib
        cap = self.index.cap_mib[cand][:, None]
        ok = (self.blocked[cand] == 0) & c.ok & (t2 <= LEVELS * (1 + EPS)) & (m2 <= cap + EPS)
        load = np.maximum(t2 / LEVELS, m2 / cap)
        load[~ok] = np.inf
        return load

    def fits(self, mi: int, g: int) -> bool:
        return bool(np.isfinite(self.loads(mi, np.asarray([g]))).any())

    def best_level(self, g: int) -> int:
        """Level with the most headroom among those every resident of ``g`` allows."""
        ok = (self.blocked[g] == 0) & (self.busy[g] <= LEVELS * (1 + EPS))
        ok &= self.mem[g] <= self.index.cap_mib[g] + EPS
        load = np.maximum(self.busy[g] / LEVELS, self.mem[g] / self.index.cap_mib[g])
        load[~ok] = np.inf
        return int(load.argmin())

    def used(self) -> int:
        return int((self.count > 0).sum())

    def assignments(self) -> list[Assignment]:
        out: list[Assignment] = []
        for g in np.flatnonzero(self.count > 0):
            gi = int(g)
            lv = self.best_level(gi)
            gpu = self.index.gpus[gi]
            d = float(LEVELS[lv])
            for mi, r in sorted(self.residents[gi]):
                c = self.index.costs[mi]
                out.append(
                    Assignment(
                        model=self.index.models[mi].name,
                        replica=r,
                        node=gpu.node,
                        gpu=gpu.index,
                        batch_size=int(c.batch[lv]),
                        duty_cycle_ms=d,
                        busy_ms=float(c.busy_ms[lv]),
                        memory_mib=float(c.memory_mib[lv]),
                    )
                )
        out.sort(key=lambda a: (a.model, a.replica))
        return out
