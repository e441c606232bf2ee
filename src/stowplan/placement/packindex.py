"""Per-problem read-only packing tables: ``PackIndex`` (built once per problem, read many).

The level costs of every model as matrices, GPU classes, eligibility, the fit-test tables of the
best-fit hot path (``EvalTables``) and the row layout of ``PackState`` (``ROW``: per level busy
ms | memory MiB | forbidding residents | busy ms with +inf where forbidden). Vectorised; what only
slow paths need (per-model ``LevelCosts``, the full eligibility matrix, key lookups) is computed
on first use. Callers: ``packing`` (the mutable state), bestfit, planner, lns, cpsat, online.
Pure; no I/O, no solver.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import overload

import numpy as np
import numpy.typing as npt

from stowplan.placement.capacity import (
    DUTY_LEVELS_MS,
    EPS,
    LevelCosts,
    LevelMatrices,
    level_cost_matrices,
)
from stowplan.placement.filters import gpu_admits
from stowplan.placement.models import Gpu, ModelDemand, Problem
from stowplan.placement.nodefit import NodeIndex

LEVELS = np.asarray(DUTY_LEVELS_MS)
NL = len(DUTY_LEVELS_MS)
# a PackState row, per level: busy ms | memory MiB | forbidding residents | busy ms, +inf where
# forbidden (what a fit test reads)
ROW = 4 * NL
BUSYX = 3 * NL
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
    """Per model, at its allowed levels only, laid out as [busy | memory] blocks (2 x k
    entries): offsets into a PackState row (busy with +inf where forbidden, memory), the
    replica's own cost added there, the divisor giving a load (level ms, capacity) and the
    upper limit of a fit. Model ``mi`` owns ``[2 * start[mi], 2 * start[mi + 1])``; the memory
    divisor and limit need one capacity for every GPU (``PackIndex.uniform_cap``), else only
    the busy half is used."""

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
    solo_slack: npt.NDArray[np.float64]  # (models,) free time share of a GPU holding one replica
    ev: EvalTables
    nodes: NodeIndex | None  # node CPU/memory and gangs; None when the problem has none

    @staticmethod
    def build(problem: Problem) -> PackIndex:
        gpus = problem.gpus
        models = problem.models
        n_models = len(models)
        # GPU classes: equal memory, type and labels
        mem_mib = [g.memory_mib for g in gpus]
        types = [g.gpu_type for g in gpus]
        labels = [g.labels for g in gpus]
        keys: list[tuple[object, ...]] = list(zip(mem_mib, types, strict=True))
        if any(labels):
            keys = [(*k, *sorted(lab.items())) for k, lab in zip(keys, labels, strict=True)]
        classes = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        cls = [classes[k] for k in keys]
        cap = np.asarray(mem_mib, dtype=float) - problem.memory_reserve_mib
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
        busyx = np.where(ok, mats.busy_ms, np.inf)
        inc = np.concatenate([mats.busy_ms, mats.memory_mib, (~ok).astype(float), busyx], axis=1)
        solo_slack = 1.0 - (busyx / LEVELS).min(axis=1)
        uniform = float(cap[0]) if len(gpus) and bool((cap == cap[0]).all()) else None
        elig_rows = np.stack(rows)
        return PackIndex(
            problem=problem,
            gpus=gpus,
            models=models,
            mats=mats,
            inc=inc,
            restricted=restricted,
            elig_rows=elig_rows,
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
            solo_slack=solo_slack,
            ev=_eval_tables(mats, uniform),
            nodes=NodeIndex.build(problem, elig_rows, elig_kind),
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

    @cached_property
    def opens_alone(self) -> npt.NDArray[np.bool_]:
        """(models,) with a single GPU class: whether a replica may open an empty GPU (the
        tests ``bestfit.choose_empty`` makes)."""
        cap = float(self.cap_mib[0])
        out = self.min_share <= 1.0 + 1e-9
        out &= self.min_mem <= cap + EPS
        out &= self.empty_loads(cap) >= 0
        return out

    def size(self, mi: int) -> float:
        """Best-fit-decreasing key: the larger of a replica's smallest time and memory share."""
        return float(self.size_key[mi])


def _eval_tables(mats: LevelMatrices, cap: float | None) -> EvalTables:
    ok = mats.ok
    k = ok.sum(axis=1)
    start = np.concatenate(([0], np.cumsum(k)))
    mi, lv = np.nonzero(ok)  # row-major: each model's allowed levels, ascending
    base = start[mi] + np.arange(mi.size)  # == 2 * start[mi] + position among its levels
    km = k[mi]
    n = 2 * mi.size
    off = np.empty(n, dtype=np.intp)
    add = np.empty(n)
    div = np.ones(n)
    lim = np.zeros(n)
    off[base], off[base + km] = BUSYX + lv, NL + lv
    add[base], add[base + km] = mats.busy_ms[mi, lv], mats.memory_mib[mi, lv]
    div[base] = LEVELS[lv]
    lim[base] = LEVELS[lv] * (1 + EPS)
    if cap is not None:
        div[base + km] = cap
        lim[base + km] = cap + EPS
    return EvalTables(start=start.tolist(), off=off, add=add, div=div, lim=lim)
