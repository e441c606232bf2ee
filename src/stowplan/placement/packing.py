"""Mutable packing state shared by best-fit, online mode and the LNS: who sits on which GPU.

``PackState`` keeps one row per GPU (``PackState.rows``): the summed busy time, the summed
memory and the number of residents that forbid the level, for every duty-cycle level, so adding
a replica is one row addition and testing "does replica r fit on GPU g at some level" is one
gather over the candidate GPUs (see ``bestfit``). ``PackIndex`` holds the per-problem read-only
tables (level costs of every model as matrices, GPU classes, eligibility); it is built once per
problem (compute once, read many), vectorised, and what only slow paths need (per-model
``LevelCosts``, the full eligibility matrix, key lookups) is computed on first use. Private to the
placement package: nothing here leaves ``plan()``, which returns frozen values. No I/O, no solver.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from stowplan.placement.capacity import (
    DUTY_LEVELS_MS,
    EPS,
    LevelCosts,
    LevelMatrices,
    level_cost_matrices,
)
from stowplan.placement.models import Assignment, Gpu, ModelDemand, Problem
from stowplan.placement.verify import gpu_admits

LEVELS = np.asarray(DUTY_LEVELS_MS)
NL = len(DUTY_LEVELS_MS)
ROW = 3 * NL  # a PackState row: busy ms | memory MiB | forbidding residents, per level
Replica = tuple[int, int]  # (model index, replica index)


class LazyCosts(Sequence[LevelCosts]):
    """``index.costs[mi]``: model ``mi``'s ``LevelCosts``, views built on first access."""

    def __init__(self, mats: LevelMatrices) -> None:
        self._mats = mats
        self._rows: list[LevelCosts | None] = [None] * len(mats.ok)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> LevelCosts: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[LevelCosts]: ...

    def __getitem__(self, i: int | slice) -> LevelCosts | Sequence[LevelCosts]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self._rows))[i]]
        c = self._rows[i]
        if c is None:
            c = self._rows[i] = self._mats.row(i)
        return c

    def __iter__(self) -> Iterator[LevelCosts]:
        return (self[i] for i in range(len(self._rows)))


@dataclass(frozen=True)
class EvalTables:
    """Per model, at its allowed levels only, laid out as [busy | memory | forbidding] blocks
    (3 x k entries): flat offsets into a PackState row, the replica's own cost added there,
    the divisor giving a load (level ms, capacity, 1) and the upper limit of a fit. Model ``mi``
    owns ``[3 * start[mi], 3 * start[mi + 1])``; divisor and limit need one capacity for every
    GPU (``PackIndex.uniform_cap``), else only the busy and forbidding parts are used."""

    start: list[int]
    off: npt.NDArray[np.intp]
    add: npt.NDArray[np.float64]
    div: npt.NDArray[np.float64]
    lim: npt.NDArray[np.float64]


@dataclass(frozen=True)
class PackIndex:
    """Per-problem read-only tables: GPUs, models, level costs and GPU eligibility."""

    problem: Problem
    gpus: tuple[Gpu, ...]
    models: tuple[ModelDemand, ...]
    mats: LevelMatrices  # (models, levels) busy, memory, batch, ok
    inc: npt.NDArray[np.float64]  # (models, ROW): what one replica adds to a PackState row
    restricted: npt.NDArray[np.bool_]  # (models,) False: every GPU is eligible
    elig_rows: npt.NDArray[np.bool_]  # (restriction kinds, gpus); kind 0: every GPU
    elig_kind: npt.NDArray[np.intp]  # (models,) row of elig_rows
    cap_mib: npt.NDArray[np.float64]  # (gpus,) memory minus reserve
    uniform_cap: float | None  # the capacity when every GPU has the same, else None
    min_share: npt.NDArray[np.float64]  # (models,) smallest time share over levels
    min_mem: npt.NDArray[np.float64]  # (models,) smallest memory over levels
    gpu_class: npt.NDArray[np.int64]  # (gpus,) GPUs with equal memory, type and labels
    class_first: list[int]  # lowest GPU index of each class
    slack_floor: float  # a GPU with less free time share can take no replica at all
    max_cap_mib: npt.NDArray[np.float64]  # (models,) largest eligible capacity, -inf if none
    size_key: npt.NDArray[np.float64]  # (models,) ``size(mi)`` for every model
    top_level: npt.NDArray[np.intp]  # (models,) highest allowed level (0 if none)
    ev: EvalTables

    @staticmethod
    def build(problem: Problem) -> PackIndex:
        gpus = problem.gpus
        models = problem.models
        n_models = len(models)
        cap = np.asarray([g.memory_mib for g in gpus], dtype=float) - problem.memory_reserve_mib
        # GPU classes: equal memory, type and labels (one key per distinct labels object)
        classes: dict[tuple[object, ...], int] = {}
        label_keys: dict[int, tuple[tuple[str, str], ...]] = {}
        cls: list[int] = []
        for g in gpus:
            lk = label_keys.get(id(g.labels))
            if lk is None:
                lk = label_keys[id(g.labels)] = tuple(sorted(g.labels.items()))
            cls.append(classes.setdefault((g.memory_mib, g.gpu_type, lk), len(classes)))
        gpu_class = np.asarray(cls, dtype=np.int64)
        class_first = [0] * len(classes)
        if len(gpus):
            firsts = np.unique(gpu_class, return_index=True)[1]
            class_first = [int(i) for i in firsts]
        # eligibility depends on type and labels only: compute it per class
        restricted = np.zeros(n_models, dtype=bool)
        elig_kind = np.zeros(n_models, dtype=np.intp)
        kinds: dict[tuple[object, ...], int] = {}
        rows = [np.ones(len(gpus), dtype=bool)]
        max_cap = np.full(n_models, float(cap.max()) if len(gpus) else -math.inf)
        for i, m in enumerate(models):
            if m.gpu_type or m.node_selector:
                restricted[i] = True
                key = (m.gpu_type, tuple(sorted(m.node_selector.items())))
                k = kinds.get(key)
                if k is None:
                    per_class = np.asarray([gpu_admits(gpus[f], m) for f in class_first], bool)
                    rows.append(per_class[gpu_class])
                    k = kinds[key] = len(rows) - 1
                elig_kind[i] = k
                max_cap[i] = float(cap[rows[k]].max(initial=-math.inf))
        mats = level_cost_matrices(models)
        ok = mats.ok
        feasible = ok.any(axis=1)
        share = np.where(ok, mats.busy_ms / LEVELS, np.inf)
        min_share = share.min(axis=1, initial=np.inf)
        min_mem = np.where(ok, mats.memory_mib, np.inf).min(axis=1, initial=np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            size_key = np.fmax(min_share, min_mem / max_cap)  # like max(): a NaN loses
        size_key[~np.isfinite(min_share) | (max_cap == -math.inf)] = math.inf
        top_level = np.where(feasible, NL - 1 - np.argmax(ok[:, ::-1], axis=1), 0)
        inc = np.concatenate([mats.busy_ms, mats.memory_mib, (~ok).astype(float)], axis=1)
        uniform = float(cap[0]) if len(gpus) and bool((cap == cap[0]).all()) else None
        return PackIndex(
            problem=problem,
            gpus=gpus,
            models=models,
            mats=mats,
            inc=inc,
            restricted=restricted,
            elig_rows=np.stack(rows),
            elig_kind=elig_kind,
            cap_mib=cap,
            uniform_cap=uniform,
            min_share=min_share,
            min_mem=min_mem,
            gpu_class=gpu_class,
            class_first=class_first,
            slack_floor=float(min_share.min(initial=1.0)) - 1e-6,
            max_cap_mib=max_cap,
            size_key=size_key,
            top_level=top_level.astype(np.intp),
            ev=_eval_tables(mats, uniform),
        )

    @cached_property
    def costs(self) -> LazyCosts:
        return LazyCosts(self.mats)

    @cached_property
    def eligible(self) -> npt.NDArray[np.bool_]:
        """(models, gpus) eligibility matrix (materialised on first use; the hot paths use
        ``elig_rows[elig_kind[mi]]``)."""
        return self.elig_rows[self.elig_kind]

    @cached_property
    def gpu_pos(self) -> dict[tuple[str, int], int]:
        return {(g.node, g.index): i for i, g in enumerate(self.gpus)}

    @cached_property
    def model_pos(self) -> dict[str, int]:
        return {m.name: i for i, m in enumerate(self.models)}

    @cached_property
    def ok_levels(self) -> tuple[npt.NDArray[np.intp], ...]:
        """Per model: the levels it allows."""
        return tuple(np.flatnonzero(row) for row in self.mats.ok)

    @cached_property
    def priority(self) -> npt.NDArray[np.int64]:
        return np.asarray([m.priority for m in self.models], dtype=np.int64)

    @cached_property
    def name_rank(self) -> npt.NDArray[np.intp]:
        """(models,) position of each model in the sorted list of names."""
        rank = np.empty(len(self.models), dtype=np.intp)
        rank[sorted(range(len(self.models)), key=lambda i: self.models[i].name)] = np.arange(
            len(self.models)
        )
        return rank

    def is_eligible(self, mi: int, g: int) -> bool:
        return bool(self.elig_rows[self.elig_kind[mi], g])

    def empty_loads(self, cap: float) -> npt.NDArray[np.float64]:
        """(models,) load of one replica alone on an empty GPU of capacity ``cap`` at its best
        level (the same arithmetic as ``bestfit``), -1 where it fits at no level."""
        cache: dict[float, npt.NDArray[np.float64]] = self.__dict__.setdefault("_empty", {})
        out = cache.get(cap)
        if out is None:
            t = 0.0 + self.mats.busy_ms
            m = 0.0 + self.mats.memory_mib
            fit = self.mats.ok & (t <= LEVELS * (1 + EPS)) & (m <= cap + EPS)
            with np.errstate(divide="ignore", invalid="ignore"):
                load = np.maximum(t / LEVELS, m / cap)
            load[~fit] = np.inf
            out = load.min(axis=1, initial=np.inf)
            out[out == np.inf] = -1.0
            cache[cap] = out
        return out

    def size(self, mi: int) -> float:
        """Best-fit-decreasing key: the larger of a replica's smallest time and memory share."""
        return float(self.size_key[mi])


def _eval_tables(mats: LevelMatrices, cap: float | None) -> EvalTables:
    ok = mats.ok
    k = ok.sum(axis=1)
    start = np.concatenate(([0], np.cumsum(k)))
    mi, lv = np.nonzero(ok)  # row-major: each model's allowed levels, ascending
    j = np.arange(mi.size) - start[mi]  # position among the model's levels
    base = 3 * start[mi] + j
    km = k[mi]
    n = 3 * mi.size
    off = np.empty(n, dtype=np.intp)
    add = np.zeros(n)
    div = np.ones(n)
    lim = np.full(n, 0.5)  # forbidding residents: must be 0
    off[base], off[base + km], off[base + 2 * km] = lv, NL + lv, 2 * NL + lv
    add[base], add[base + km] = mats.busy_ms[mi, lv], mats.memory_mib[mi, lv]
    div[base] = LEVELS[lv]
    lim[base] = LEVELS[lv] * (1 + EPS)
    if cap is not None:
        div[base + km] = cap
        lim[base + km] = cap + EPS
    return EvalTables(start=start.tolist(), off=off, add=add, div=div, lim=lim)


@dataclass
class PackState:
    """Residents per GPU plus per-level sums; mutate with ``add``/``remove`` only (and
    ``holds``, which callers may set to keep a model off a GPU)."""

    index: PackIndex
    rows: npt.NDArray[np.float64] = field(init=False)  # (gpus, ROW), see module docstring
    count: npt.NDArray[np.int64] = field(init=False)  # (gpus,)
    holds: npt.NDArray[np.bool_] = field(init=False)  # (models, gpus)
    residents: list[set[Replica]] = field(init=False)
    where: dict[Replica, int] = field(init=False)
    # per GPU class: a min-heap of GPU indices that may be empty (stale entries are skipped)
    empty_heaps: list[list[int]] = field(init=False)
    _busy_ids: npt.NDArray[np.intp] | None = field(init=False, default=None)
    open_slack: npt.NDArray[np.float64] = field(init=False)  # best free time share; -1 if empty
    mem_free0: npt.NDArray[np.float64] = field(init=False)  # (gpus,) cap - memory at level 0
    # used GPUs that may still take the smallest replica (a superset; see ``active``)
    _active: npt.NDArray[np.intp] | None = field(init=False, default=None)
    _active_sorted: bool = field(init=False, default=True)
    _appended: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        g = len(self.index.gpus)
        self.rows = np.zeros((g, ROW))
        self.count = np.zeros(g, dtype=np.int64)
        self.holds = np.zeros((len(self.index.models), g), dtype=bool)
        self.residents = [set() for _ in range(g)]
        self.where = {}
        self.open_slack = np.full(g, -1.0)
        self.mem_free0 = self.index.cap_mib.copy()
        heaps: list[list[int]] = [[] for _ in self.index.class_first]
        if len(heaps) == 1:
            heaps[0] = list(range(g))
        else:
            for i, k in enumerate(self.index.gpu_class.tolist()):
                heaps[k].append(i)  # ascending: already a heap
        self.empty_heaps = heaps

    @property
    def busy(self) -> npt.NDArray[np.float64]:
        """(gpus, levels) summed busy ms (a view)."""
        return self.rows[:, :NL]

    @property
    def mem(self) -> npt.NDArray[np.float64]:
        """(gpus, levels) summed memory MiB (a view)."""
        return self.rows[:, NL : 2 * NL]

    @property
    def blocked(self) -> npt.NDArray[np.float64]:
        """(gpus, levels) number of residents that forbid the level (a view)."""
        return self.rows[:, 2 * NL :]

    def copy(self) -> PackState:
        new = PackState.__new__(PackState)
        new.index = self.index
        new.rows = self.rows.copy()
        new.count = self.count.copy()
        new.holds = self.holds.copy()
        new.residents = [set(s) for s in self.residents]
        new.where = dict(self.where)
        new.open_slack = self.open_slack.copy()
        new.mem_free0 = self.mem_free0.copy()
        new._active, new._active_sorted = self._active, self._active_sorted
        new._appended = list(self._appended)
        new.empty_heaps = [list(h) for h in self.empty_heaps]
        new._busy_ids = self._busy_ids
        return new

    def busy_ids(self) -> npt.NDArray[np.intp]:
        """Indices of the GPUs in use, ascending (cached until a GPU opens or empties)."""
        if self._busy_ids is None:
            self._busy_ids = np.flatnonzero(self.count > 0)
        return self._busy_ids

    def active(self) -> tuple[npt.NDArray[np.intp], bool]:
        """(used GPUs that may still take the smallest replica of any model, whether that
        array is ascending). A superset: GPUs that filled up since the last rebuild stay
        until the next one."""
        if self._active is None or len(self._appended) > 64:
            self._active = np.flatnonzero(self.open_slack >= self.index.slack_floor)
            self._active_sorted = True
            self._appended = []
        elif self._appended:
            new = np.asarray(self._appended, dtype=np.intp)
            if self._active_sorted and (
                (self._active.size and new[0] < self._active[-1]) or (np.diff(new) < 0).any()
            ):
                self._active_sorted = False
            self._active = np.concatenate((self._active, new))
            self._appended = []
        return self._active, self._active_sorted

    def first_empty(self, k: int) -> int | None:
        """The lowest-index empty GPU of class ``k`` (None if the class is full)."""
        heap = self.empty_heaps[k]
        count = self.count
        while heap and count[heap[0]] > 0:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _refresh(self, g: int) -> None:
        """Recompute the GPU's free time share (``open_slack``) and level-0 free memory."""
        row = self.rows[g]
        if self.count[g]:
            busy = np.where(row[2 * NL :] != 0, np.inf, row[:NL])
            self.open_slack[g] = float((1.0 - busy / LEVELS).max())
        else:
            self.open_slack[g] = -1.0
        self.mem_free0[g] = self.index.cap_mib[g] - row[NL]

    def add(self, rep: Replica, g: int) -> None:
        mi = rep[0]
        self.rows[g] += self.index.inc[mi]
        self.count[g] += 1
        if self.count[g] == 1:
            self._busy_ids = None
            if self._active is not None:
                self._appended.append(g)
        self.holds[mi, g] = True
        self.residents[g].add(rep)
        self.where[rep] = g
        self._refresh(g)

    def add_many(self, mi: int, reps: Sequence[Replica], gs: Sequence[int]) -> None:
        """``add(rep, g)`` for each pair; the GPUs must be distinct."""
        if len(gs) == 1:
            self.add(reps[0], gs[0])
            return
        ga = np.asarray(gs, dtype=np.intp)
        self.rows[ga] += self.index.inc[mi]
        self.count[ga] += 1
        self.holds[mi, ga] = True
        opened = [g for g, c in zip(gs, self.count[ga].tolist(), strict=True) if c == 1]
        if opened:
            self._busy_ids = None
            if self._active is not None:
                self._appended += opened
        where, residents = self.where, self.residents
        for rep, g in zip(reps, gs, strict=True):
            residents[g].add(rep)
            where[rep] = g
        rows = self.rows[ga]
        busy = np.where(rows[:, 2 * NL :] != 0, np.inf, rows[:, :NL])
        self.open_slack[ga] = (1.0 - busy / LEVELS).max(axis=1)
        self.mem_free0[ga] = self.index.cap_mib[ga] - rows[:, NL]

    def remove(self, rep: Replica) -> int:
        g = self.where.pop(rep)
        self.rows[g] -= self.index.inc[rep[0]]
        self.count[g] -= 1
        self.holds[rep[0], g] = False
        self.residents[g].discard(rep)
        self._active = None  # the GPU's slack grew: it may be active again
        if self.count[g] == 0:  # wipe float drift
            self.rows[g] = 0.0
            self._busy_ids = None
            heapq.heappush(self.empty_heaps[int(self.index.gpu_class[g])], g)
        self._refresh(g)
        return g

    def loads(self, mi: int, cand: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """(len(cand), levels) load max(time share, memory share) after adding a replica of
        model ``mi``; inf where it does not fit at that level."""
        mats = self.index.mats
        t2 = self.busy[cand] + mats.busy_ms[mi]
        m2 = self.mem[cand] + mats.memory_mib[mi]
        cap = self.index.cap_mib[cand][:, None]
        ok = (self.blocked[cand] == 0) & mats.ok[mi] & (t2 <= LEVELS * (1 + EPS))
        ok &= m2 <= cap + EPS
        load = np.maximum(t2 / LEVELS, m2 / cap)
        load[~ok] = np.inf
        return load

    def fits(self, mi: int, g: int) -> bool:
        return bool(np.isfinite(self.loads(mi, np.asarray([g]))).any())

    def best_level(self, g: int) -> int:
        """Level with the most headroom among those every resident of ``g`` allows."""
        return int(self._best_levels(np.asarray([g]))[0])

    def _best_levels(self, gs: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        cap = self.index.cap_mib[gs][:, None]
        busy, mem = self.busy[gs], self.mem[gs]
        ok = (self.blocked[gs] == 0) & (busy <= LEVELS * (1 + EPS)) & (mem <= cap + EPS)
        load = np.maximum(busy / LEVELS, mem / cap)
        load[~ok] = np.inf
        return load.argmin(axis=1)

    def used(self) -> int:
        return int((self.count > 0).sum())

    def assignments(self) -> list[Assignment]:
        """Every placed replica at its GPU's best level, sorted by (model name, replica)."""
        if not self.where:
            return []
        index, mats = self.index, self.index.mats
        reps = np.asarray(list(self.where.keys()), dtype=np.intp)
        gs = np.asarray(list(self.where.values()), dtype=np.intp)
        mi, r = reps[:, 0], reps[:, 1]
        order = np.lexsort((r, index.name_rank[mi]))
        mi, r, gs = mi[order], r[order], gs[order]
        used = np.unique(gs)
        level_of = np.zeros(len(index.gpus), dtype=np.intp)
        level_of[used] = self._best_levels(used)  # == best_level(g) for every used GPU
        lv = level_of[gs]
        gpus, models = index.gpus, index.models
        out = []
        for m, rr, g, b, d, t, mem in zip(
            mi.tolist(),
            r.tolist(),
            gs.tolist(),
            mats.batch[mi, lv].tolist(),
            LEVELS[lv].tolist(),
            mats.busy_ms[mi, lv].tolist(),
            mats.memory_mib[mi, lv].tolist(),
            strict=True,
        ):
            gpu = gpus[g]
            out.append(
                trusted_assignment(
                    model=models[m].name,
                    replica=rr,
                    node=gpu.node,
                    gpu=gpu.index,
                    batch_size=b,
                    duty_cycle_ms=d,
                    busy_ms=t,
                    memory_mib=mem,
                )
            )
        return out


_ASSIGNMENT_FIELDS = frozenset(Assignment.model_fields)
_ASSIGNMENT_DEFAULTS = {
    name: f.get_default(call_default_factory=True)
    for name, f in Assignment.model_fields.items()
    if not f.is_required()
}


def trusted_assignment(**values: Any) -> Assignment:
    """An ``Assignment`` from values the engine computed (already of the right types and
    within the field bounds), without running the validator: 4x cheaper than
    ``Assignment(...)`` and 8x cheaper than ``model_construct`` on pydantic 2.14 (10,000 of
    them per plan at fleet scale). ``tests/placement/test_bestfit_speed.py`` checks the
    result equals the validated construction."""
    for name, default in _ASSIGNMENT_DEFAULTS.items():  # immutable defaults only
        values.setdefault(name, default)
    a = object.__new__(Assignment)
    object.__setattr__(a, "__dict__", values)
    object.__setattr__(a, "__pydantic_fields_set__", set(_ASSIGNMENT_FIELDS))
    object.__setattr__(a, "__pydantic_extra__", None)
    object.__setattr__(a, "__pydantic_private__", None)
    return a
