"""Mutable packing state shared by best-fit, online mode and the LNS: who sits on which GPU.

``PackState`` keeps one row per GPU (``PackState.rows``): for every duty-cycle level the summed
busy time, the summed memory, the number of residents that forbid the level, and the busy time
again with +inf where a resident forbids the level, so adding a replica is one row addition and
testing "does replica r fit on GPU g at some level" is one gather over the candidate GPUs (see
``bestfit``). The per-problem read-only tables are ``packindex.PackIndex`` (with the row layout
constants; import them from there). Private to the placement package: nothing here leaves
``plan()``, which returns frozen values. No I/O, no solver.

Fixed node demands (``nodefit``): when the problem has them, ``PackIndex.nodes`` is set and the
state also tracks the CPU and host memory left per node; a multi-GPU replica ("gang") is added to
each of its GPUs with every level forbidden, so a gang GPU is full to every other replica, and
``gangs`` maps it to its GPUs (``where`` holds the first; ``add_gang`` and ``remove_gang`` keep
them; ``current_gpus`` says whether a running assignment can be kept as it is).
Without them (``nodes is None``) nothing here costs extra.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from stowplan.placement.capacity import EPS
from stowplan.placement.holds import Holds
from stowplan.placement.models import Assignment
from stowplan.placement.packindex import BUSYX, LEVELS, NL, ROW, PackIndex, Replica

__all__ = ["PackState", "trusted_assignment"]

_NONE = np.zeros(0)


@dataclass
class PackState:
    """Residents per GPU plus per-level sums; mutate with ``add``/``remove`` (or the batch
    forms ``add_many``/``open_many``) only, and ``holds``, which callers may set to keep a
    model off a GPU."""

    index: PackIndex
    # best_fit may hand sequences to the compiled kernel (same plans; False: the numpy path)
    use_kernel: bool = True
    rows: npt.NDArray[np.float64] = field(init=False)  # (gpus, ROW), see module docstring
    count: npt.NDArray[np.int64] = field(init=False)  # (gpus,)
    holds: Holds = field(init=False)  # closed (model, GPU) pairs
    residents: defaultdict[int, set[Replica]] = field(init=False)  # GPU -> its replicas
    where: dict[Replica, int] = field(init=False)
    # per GPU class: a min-heap of GPU indices that may be empty (stale entries are skipped);
    # every empty GPU is in its class's heap
    empty_heaps: list[list[int]] = field(init=False)
    _busy_ids: npt.NDArray[np.intp] | None = field(init=False, default=None)
    open_slack: npt.NDArray[np.float64] = field(init=False)  # best free time share; -1 if empty
    mem_free0: npt.NDArray[np.float64] = field(init=False)  # (gpus,) cap - memory at level 0
    # used GPUs that may still take the smallest replica: _act[:_n_act] (a superset, see
    # ``active``), ascending while _act_sorted; rebuilt when stale or after 64 appends
    _act: npt.NDArray[np.intp] = field(init=False)
    _n_act: int = field(init=False, default=0)
    _act_sorted: bool = field(init=False, default=True)
    _act_stale: bool = field(init=False, default=True)
    _appended: int = field(init=False, default=0)
    # fixed node demands (empty unless ``index.nodes``): CPU milli / host MiB left per node,
    # and the GPUs of each placed multi-GPU replica
    cpu_left: npt.NDArray[np.float64] = field(init=False)
    hmem_left: npt.NDArray[np.float64] = field(init=False)
    gangs: dict[Replica, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        g = len(self.index.gpus)
        self.rows = np.zeros((g, ROW))
        self.count = np.zeros(g, dtype=np.int64)
        self.holds = Holds(len(self.index.models), g)
        self.residents = defaultdict(set)
        self.where = {}
        self.open_slack = np.full(g, -1.0)
        self.mem_free0 = self.index.cap_mib.copy()
        self._act = np.empty(g, dtype=np.intp)
        heaps: list[list[int]] = [[] for _ in self.index.class_first]
        if len(heaps) == 1:
            heaps[0] = list(range(g))
        else:
            for i, k in enumerate(self.index.gpu_class.tolist()):
                heaps[k].append(i)  # ascending: already a heap
        self.empty_heaps = heaps
        nodes = self.index.nodes
        self.cpu_left = nodes.cpu_milli.copy() if nodes is not None else _NONE
        self.hmem_left = nodes.memory_mib.copy() if nodes is not None else _NONE
        self.gangs = {}

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
        return self.rows[:, 2 * NL : BUSYX]

    def copy(self) -> PackState:
        new = PackState.__new__(PackState)
        new.index = self.index
        new.use_kernel = self.use_kernel
        new.rows = self.rows.copy()
        new.count = self.count.copy()
        new.holds = self.holds.copy()
        new.residents = defaultdict(set, {g: set(s) for g, s in self.residents.items() if s})
        new.where = dict(self.where)
        new.open_slack = self.open_slack.copy()
        new.mem_free0 = self.mem_free0.copy()
        new._act, new._n_act = self._act.copy(), self._n_act
        new._act_sorted, new._act_stale = self._act_sorted, self._act_stale
        new._appended = self._appended
        new.empty_heaps = [list(h) for h in self.empty_heaps]
        new._busy_ids = self._busy_ids
        new.cpu_left = self.cpu_left.copy()
        new.hmem_left = self.hmem_left.copy()
        new.gangs = dict(self.gangs)
        return new

    def busy_ids(self) -> npt.NDArray[np.intp]:
        """Indices of the GPUs in use, ascending (cached until a GPU opens or empties)."""
        if self._busy_ids is None:
            self._busy_ids = np.flatnonzero(self.count > 0)
        return self._busy_ids

    def active(self) -> tuple[npt.NDArray[np.intp], bool]:
        """(used GPUs that may still take the smallest replica of any model, whether that
        array is ascending). A superset: GPUs that filled up since the last rebuild stay
        until the next one. A view: valid until the next change of the state."""
        if self._act_stale or self._appended > 64:
            ids = np.flatnonzero(self.open_slack >= self.index.slack_floor)
            self._n_act = ids.size
            self._act[: ids.size] = ids
            self._act_sorted, self._act_stale, self._appended = True, False, 0
        return self._act[: self._n_act], self._act_sorted

    def _opened(self, g: int) -> None:
        self._busy_ids = None
        if not self._act_stale:
            n = self._n_act
            if n and self._act_sorted and g < self._act[n - 1]:
                self._act_sorted = False
            self._act[n] = g
            self._n_act = n + 1
            self._appended += 1

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
            self.open_slack[g] = 1.0 - (row[BUSYX:] / LEVELS).min()
        else:
            self.open_slack[g] = -1.0
        self.mem_free0[g] = self.index.cap_mib[g] - row[NL]

    def add(self, rep: Replica, g: int) -> None:
        mi = rep[0]
        row = self.rows[g]
        row += self.index.inc[mi]
        c = self.count[g] = self.count[g] + 1
        if c == 1:
            self._opened(g)
        self.holds.close(mi, g)
        self.residents[g].add(rep)
        self.where[rep] = g
        self.open_slack[g] = 1.0 - (row[BUSYX:] / LEVELS).min()  # == max of 1 - share
        self.mem_free0[g] = self.index.cap_mib[g] - row[NL]
        nodes = self.index.nodes
        if nodes is not None and nodes.uses_node[mi]:
            self.node_take(mi, g, 1.0)

    def node_take(self, mi: int, g: int, times: float) -> None:
        """Take (``times`` > 0) or give back (< 0) a replica's CPU and host memory on g's
        node, ``abs(times)`` times."""
        nodes = self.index.nodes
        assert nodes is not None
        k = nodes.gpu_node[g]
        self.cpu_left[k] -= times * nodes.need_cpu[mi]
        self.hmem_left[k] -= times * nodes.need_mem[mi]

    def add_many(self, mi: int, reps: Sequence[Replica], gs: Sequence[int]) -> None:
        """``add(rep, g)`` for each pair; the GPUs must be distinct and already in use (and the
        model without node demands: ``bestfit`` places those one replica at a time)."""
        if len(gs) <= 2:
            for rep, g in zip(reps, gs, strict=True):
                self.add(rep, g)
            return
        ga = np.asarray(gs, dtype=np.intp)
        rows = self.rows[ga]
        rows += self.index.inc[mi]
        self.rows[ga] = rows
        self.count[ga] += 1
        where, residents, close = self.where, self.residents, self.holds.close
        for rep, g in zip(reps, gs, strict=True):
            close(mi, g)
            residents[g].add(rep)
            where[rep] = g
        self.open_slack[ga] = 1.0 - (rows[:, BUSYX:] / LEVELS).min(axis=1)
        self.mem_free0[ga] = self.index.cap_mib[ga] - rows[:, NL]

    def open_many(self, mi: int, reps: Sequence[Replica], gs: Sequence[int]) -> None:
        """``add(rep, g)`` for each pair; the GPUs must be distinct and empty (and the model
        without node demands, as for ``add_many``)."""
        index = self.index
        inc = index.inc[mi]
        slack, mem0 = index.solo_slack[mi], inc[NL]  # == what ``add`` computes
        rows, count, close, cap = self.rows, self.count, self.holds.close, index.cap_mib
        where, residents = self.where, self.residents
        for rep, g in zip(reps, gs, strict=True):
            row = rows[g]
            row += inc
            count[g] = 1
            close(mi, g)
            self._opened(g)
            residents[g].add(rep)
            where[rep] = g
            self.open_slack[g] = slack
            self.mem_free0[g] = cap[g] - mem0

    def remove(self, rep: Replica) -> int:
        if self.gangs and rep in self.gangs:
            return self.remove_gang(rep)
        g = self.where.pop(rep)
        nodes = self.index.nodes
        if nodes is not None and nodes.uses_node[rep[0]]:
            self.node_take(rep[0], g, -1.0)
        row = self.rows[g]
        row[:BUSYX] -= self.index.inc[rep[0], :BUSYX]
        self.count[g] -= 1
        self.holds.open(rep[0], g)
        self.residents[g].discard(rep)
        self._act_stale = True  # the GPU's slack grew: it may be active again
        if self.count[g] == 0:  # wipe float drift
            row[:] = 0.0
            self._busy_ids = None
            heapq.heappush(self.empty_heaps[int(self.index.gpu_class[g])], g)
        else:  # recompute the busy part with +inf where forbidden (inf - inf is NaN)
            row[BUSYX:] = np.where(row[2 * NL : BUSYX] != 0, np.inf, row[:NL])
        self._refresh(g)
        return g

    def add_gang(self, rep: Replica, gpus: tuple[int, ...]) -> None:
        """Place a multi-GPU replica on ``gpus`` (one node, all empty): each is full after (every
        level forbidden); its node CPU and memory are taken once."""
        mi = rep[0]
        for g in gpus:
            self.add(rep, g)
            row = self.rows[g]
            row[2 * NL : BUSYX] += 1.0
            row[BUSYX:] = np.inf
            self.open_slack[g] = -np.inf
        nodes = self.index.nodes
        assert nodes is not None
        if nodes.uses_node[mi]:  # ``add`` took it once per GPU
            self.node_take(mi, gpus[0], 1.0 - len(gpus))
        self.where[rep] = gpus[0]
        self.gangs[rep] = gpus

    def remove_gang(self, rep: Replica) -> int:
        """Undo ``add_gang``; returns the first GPU (what ``remove`` returns)."""
        mi = rep[0]
        gpus = self.gangs.pop(rep)
        nodes = self.index.nodes
        assert nodes is not None
        if nodes.uses_node[mi]:  # ``remove`` gives it back once per GPU
            self.node_take(mi, gpus[0], len(gpus) - 1.0)
        for g in gpus:
            self.rows[g, 2 * NL : BUSYX] -= 1.0
            self.where[rep] = g
            self.remove(rep)
        return gpus[0]

    def place(self, rep: Replica, gpus: tuple[int, ...]) -> None:
        """``add`` for one GPU, ``add_gang`` for several."""
        if len(gpus) == 1:
            self.add(rep, gpus[0])
        else:
            self.add_gang(rep, gpus)

    def gang_fits(self, mi: int, gpus: tuple[int, ...]) -> bool:
        """Whether a multi-GPU replica of ``mi`` may take exactly ``gpus`` now: as many as it
        needs, distinct, empty, on one node with its CPU/memory, eligible, not reserved."""
        index = self.index
        nodes = index.nodes
        if nodes is None or len(gpus) != nodes.gang[mi] or len(set(gpus)) != len(gpus):
            return False
        ids = np.asarray(gpus, dtype=np.intp)
        node = nodes.gpu_node[ids]
        if (node != node[0]).any() or not nodes.room(mi, self.cpu_left, self.hmem_left, node)[0]:
            return False
        return bool(
            (self.count[ids] == 0).all()
            and index.elig_rows[index.elig_kind[mi], ids].all()
            and not self.holds.closed(mi, ids).any()
            and (index.min_mem[mi] <= index.cap_mib[ids] + EPS).all()
        )

    def current_gpus(self, mi: int, a: Assignment) -> tuple[int, ...] | None:
        """The GPU indices of assignment ``a`` if a replica of ``mi`` may be added there now
        (eligible, not reserved, fits; a multi-GPU replica: exactly its GPUs), else None."""
        index = self.index
        if a.extra_gpus or (index.nodes is not None and index.nodes.gang[mi] > 1):
            gs = tuple(index.gpu_pos.get(k, -1) for k in a.gpu_keys)
            return gs if -1 not in gs and self.gang_fits(mi, gs) else None
        g = index.gpu_pos.get(a.gpu_key)
        if g is None or not index.is_eligible(mi, g) or self.holds.is_closed(mi, g):
            return None
        return (g,) if self.fits(mi, g) else None

    def loads(self, mi: int, cand: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """(len(cand), levels) load max(time share, memory share) after adding a replica of
        model ``mi``; inf where it does not fit at that level."""
        mats = self.index.mats
        t2 = self.busy[cand] + mats.busy_ms[mi]
        m2 = self.mem[cand] + mats.memory_mib[mi]
        cap = self.index.cap_mib[cand][:, None]
        ok = (self.blocked[cand] == 0) & mats.ok[mi] & (t2 <= LEVELS * (1 + EPS))
        ok &= m2 <= cap + EPS
        load: npt.NDArray[np.float64] = np.maximum(t2 / LEVELS, m2 / cap)
        load[~ok] = np.inf
        return load

    def fits(self, mi: int, g: int) -> bool:
        nodes = self.index.nodes
        if nodes is not None and nodes.special[mi]:
            if nodes.gang[mi] > 1:
                return False  # a multi-GPU replica: ``gang_fits``
            if not nodes.room(mi, self.cpu_left, self.hmem_left, nodes.gpu_node[g : g + 1])[0]:
                return False
        return bool(np.isfinite(self.loads(mi, np.asarray([g]))).any())

    def best_level(self, g: int) -> int:
        """Level with the most headroom among those every resident of ``g`` allows."""
        return int(self._best_levels(np.asarray([g]))[0])

    def _best_levels(self, gs: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        cap = self.index.cap_mib[gs][:, None]
        busy, mem = self.busy[gs], self.mem[gs]
        ok = (self.blocked[gs] == 0) & (busy <= LEVELS * (1 + EPS)) & (mem <= cap + EPS)
        load: npt.NDArray[np.float64] = np.maximum(busy / LEVELS, mem / cap)
        load[~ok] = np.inf
        best: npt.NDArray[np.intp] = load.argmin(axis=1)
        return best

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
        names = [m.name for m in models]
        new, set_attr, fields, extra = object.__new__, object.__setattr__, _FIELDS, _EXTRA
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
            values = {
                "model": names[m],
                "replica": rr,
                "node": gpu.node,
                "gpu": gpu.index,
                "batch_size": b,
                "duty_cycle_ms": d,
                "busy_ms": t,
                "memory_mib": mem,
            }
            if extra:
                values.update(extra)
            a = new(Assignment)  # what trusted_assignment does, inlined
            set_attr(a, "__dict__", values)
            set_attr(a, "__pydantic_fields_set__", fields)
            set_attr(a, "__pydantic_extra__", None)
            set_attr(a, "__pydantic_private__", None)
            out.append(a)
        if self.gangs:  # a multi-GPU replica: one assignment, its other GPUs in extra_gpus
            pos = {(a.model, a.replica): i for i, a in enumerate(out)}
            for (m, rr), held in self.gangs.items():
                i = pos[(names[m], rr)]
                others = tuple(gpus[g].index for g in held[1:])
                out[i] = trusted_assignment(**{**out[i].__dict__, "extra_gpus": others})
        return out


_ENGINE_FIELDS = (
    "model",
    "replica",
    "node",
    "gpu",
    "batch_size",
    "duty_cycle_ms",
    "busy_ms",
    "memory_mib",
)
# defaults of the other fields (immutable ones: shared by every instance)
_EXTRA = {
    name: f.get_default(call_default_factory=True)
    for name, f in Assignment.model_fields.items()
    if name not in _ENGINE_FIELDS and not f.is_required()
}
# the fields set explicitly (as if passed to ``Assignment(...)``); one set shared by every
# instance ``assignments`` builds (pydantic only adds names of existing fields to it, and copies
# it before ``model_copy`` updates it)
_FIELDS = set(_ENGINE_FIELDS)


def trusted_assignment(**values: Any) -> Assignment:
    """An ``Assignment`` from values the engine computed (already of the right types and
    within the field bounds), without running the validator: 4x cheaper than
    ``Assignment(...)`` and 8x cheaper than ``model_construct`` on pydantic 2.14 (10,000 of
    them per plan at fleet scale; ``PackState.assignments`` inlines it).
    ``tests/placement/test_bestfit_speed.py`` checks the result equals the validated
    construction."""
    given = set(values)
    values = {
        name: values[name] if name in values else f.get_default(call_default_factory=True)
        for name, f in Assignment.model_fields.items()
    }
    a = object.__new__(Assignment)
    object.__setattr__(a, "__dict__", values)
    object.__setattr__(a, "__pydantic_fields_set__", given)
    object.__setattr__(a, "__pydantic_extra__", None)
    object.__setattr__(a, "__pydantic_private__", None)
    return a
