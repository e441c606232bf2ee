"""Mutable packing state shared by best-fit, online mode and the LNS: who sits on which GPU.

``PackState`` keeps, for every GPU and every duty-cycle level, the summed busy time and memory of
its residents and whether every resident allows that level, so testing "does replica r fit on GPU
g at some level" is a vectorised numpy expression over all candidate GPUs. It is built once per
problem (``PackIndex``: compute once, read many) and is private to the placement package: it
never leaves ``plan()``, which returns frozen values. No I/O, no solver.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stowplan.placement.capacity import DUTY_LEVELS_MS, EPS, LevelCosts, level_costs_many
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
    restricted: npt.NDArray[np.bool_]  # (models,) False: every GPU is eligible
    cap_mib: npt.NDArray[np.float64]  # (gpus,) memory minus reserve
    min_share: npt.NDArray[np.float64]  # (models,) smallest time share over levels
    min_mem: npt.NDArray[np.float64]  # (models,) smallest memory over levels
    gpu_class: npt.NDArray[np.int64]  # (gpus,) GPUs with equal memory, type and labels
    ok_levels: tuple[npt.NDArray[np.intp], ...]  # per model: the levels it allows
    slack_floor: float  # a GPU with less free time share can take no replica at all
    max_cap_mib: npt.NDArray[np.float64]  # (models,) largest eligible capacity, -inf if none
    # per model, at its allowed levels only: busy ms, memory MiB, level ms (best-fit hot path)
    lv_busy: tuple[npt.NDArray[np.float64], ...]
    lv_mem: tuple[npt.NDArray[np.float64], ...]
    lv_ms: tuple[npt.NDArray[np.float64], ...]
    not_ok: tuple[npt.NDArray[np.int64], ...]  # per model: 1 at the levels it forbids

    @staticmethod
    def build(problem: Problem) -> PackIndex:
        gpus = problem.gpus
        models = problem.models
        eligible = np.ones((len(models), len(gpus)), dtype=bool)
        restricted = np.zeros(len(models), dtype=bool)
        admits: dict[tuple[object, ...], npt.NDArray[np.bool_]] = {}
        cap = np.asarray([g.memory_mib - problem.memory_reserve_mib for g in gpus], dtype=float)
        max_cap = np.full(len(models), float(cap.max()) if len(gpus) else -math.inf)
        for i, m in enumerate(models):
            if m.gpu_type or m.node_selector:
                restricted[i] = True
                key = (m.gpu_type, tuple(sorted(m.node_selector.items())))
                if key not in admits:
                    admits[key] = np.asarray([gpu_admits(g, m) for g in gpus], dtype=bool)
                eligible[i, :] = admits[key]
                max_cap[i] = float(cap[admits[key]].max(initial=-math.inf))
        costs = level_costs_many(models)
        min_share = np.asarray([c.min_share() for c in costs], dtype=float)
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
            restricted=restricted,
            cap_mib=cap,
            min_share=min_share,
            min_mem=np.asarray([c.min_memory_mib() for c in costs]),
            gpu_class=gpu_class,
            ok_levels=tuple(np.flatnonzero(c.ok) for c in costs),
            slack_floor=float(min_share.min(initial=1.0)) - 1e-6,
            max_cap_mib=max_cap,
            lv_busy=tuple(c.busy_ms[c.ok] for c in costs),
            lv_mem=tuple(c.memory_mib[c.ok] for c in costs),
            lv_ms=tuple(LEVELS[c.ok] for c in costs),
            not_ok=tuple((~c.ok).astype(np.int64) for c in costs),
        )

    def size(self, mi: int) -> float:
        """Best-fit-decreasing key: the larger of a replica's smallest time and memory share."""
        if not math.isfinite(self.min_share[mi]) or self.max_cap_mib[mi] == -math.inf:
            return math.inf
        return max(float(self.min_share[mi]), float(self.min_mem[mi] / self.max_cap_mib[mi]))


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
    # per GPU class: a min-heap of GPU indices that may be empty (stale entries are skipped)
    empty_heaps: list[list[int]] = field(init=False)
    _busy_ids: npt.NDArray[np.intp] | None = field(init=False, default=None)
    open_slack: npt.NDArray[np.float64] = field(init=False)  # slack of used GPUs, -1 if empty
    mem_free0: npt.NDArray[np.float64] = field(init=False)  # (gpus,) cap - memory at level 0
    # used GPUs that may still take the smallest replica (a superset, unsorted; see ``active``)
    _active: npt.NDArray[np.intp] | None = field(init=False, default=None)
    _appended: int = field(init=False, default=0)

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
        self.open_slack = np.full(g, -1.0)
        self.mem_free0 = self.index.cap_mib.copy()
        n_classes = int(self.index.gpu_class.max()) + 1 if g else 0
        self.empty_heaps = [[] for _ in range(n_classes)]
        for i, k in enumerate(self.index.gpu_class.tolist()):
            self.empty_heaps[k].append(i)  # ascending: already a heap

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
        new.open_slack = self.open_slack.copy()
        new.mem_free0 = self.mem_free0.copy()
        new._active, new._appended = self._active, self._appended
        new.empty_heaps = [list(h) for h in self.empty_heaps]
        new._busy_ids = self._busy_ids
        return new

    def busy_ids(self) -> npt.NDArray[np.intp]:
        """Indices of the GPUs in use, ascending (cached until a GPU opens or empties)."""
        if self._busy_ids is None:
            self._busy_ids = np.flatnonzero(self.count > 0)
        return self._busy_ids

    def active(self) -> npt.NDArray[np.intp]:
        """Used GPUs that may still take the smallest replica of any model (a superset:
        GPUs that filled up since the last rebuild stay until the next one), unsorted."""
        if self._active is None or self._appended > 64:
            self._active = np.flatnonzero(self.open_slack >= self.index.slack_floor)
            self._appended = 0
        return self._active

    def first_empty(self, k: int) -> int | None:
        """The lowest-index empty GPU of class ``k`` (None if the class is full)."""
        heap = self.empty_heaps[k]
        while heap and self.count[heap[0]] > 0:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _update_slack(self, g: int) -> None:
        if self.count[g]:
            free = 1.0 - self.busy[g] / LEVELS
            free[self.blocked[g] != 0] = -1.0
            self.slack[g] = self.open_slack[g] = float(free.max())
        else:
            self.slack[g], self.open_slack[g] = 1.0, -1.0

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
        self.blocked[g] += self.index.not_ok[rep[0]]
        self.count[g] += 1
        if self.count[g] == 1:
            self._busy_ids = None
            if self._active is not None:
                self._active = np.append(self._active, g)
                self._appended += 1
        self.holds[rep[0], g] = True
        self.residents[g].add(rep)
        self.where[rep] = g
        self._update_slack(g)
        self.mem_free0[g] = self.index.cap_mib[g] - self.mem[g, 0]

    def remove(self, rep: Replica) -> int:
        g = self.where.pop(rep)
        c = self.index.costs[rep[0]]
        self.busy[g] -= c.busy_ms
        self.mem[g] -= c.memory_mib
        self.blocked[g] -= self.index.not_ok[rep[0]]
        self.count[g] -= 1
        self.holds[rep[0], g] = False
        self.residents[g].discard(rep)
        self._active = None  # the GPU's slack grew: it may be active again
        if self.count[g] == 0:  # wipe float drift
            self.busy[g] = 0.0
            self.mem[g] = 0.0
            self._busy_ids = None
            heapq.heappush(self.empty_heaps[int(self.index.gpu_class[g])], g)
        self._update_slack(g)
        self.mem_free0[g] = self.index.cap_mib[g] - self.mem[g, 0]
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
        used = np.flatnonzero(self.count > 0)
        if used.size == 0:
            return out
        cap = self.index.cap_mib[used][:, None]
        busy, mem = self.busy[used], self.mem[used]
        ok = (self.blocked[used] == 0) & (busy <= LEVELS * (1 + EPS)) & (mem <= cap + EPS)
        load = np.maximum(busy / LEVELS, mem / cap)
        load[~ok] = np.inf
        best = load.argmin(axis=1)  # == best_level(g) for every used GPU
        build = Assignment
        for gi, lv in zip(used.tolist(), best.tolist(), strict=True):
            gpu = self.index.gpus[gi]
            d = float(LEVELS[lv])
            for mi, r in sorted(self.residents[gi]):
                c = self.index.costs[mi]
                out.append(
                    build(
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
