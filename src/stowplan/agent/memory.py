"""The agent's cached device allocator: model residency in one device-memory pool.

A :class:`ResidencyManager` owns a pool of ``pool_bytes`` reserved once (the agent reserves it
from the CUDA arena at start-up; this module only keeps the books). Each registered model needs
one contiguous block of ``weights_bytes + workspace_bytes`` carved from the pool while it is
*resident*. ``acquire(model)`` makes a model resident (prefetching it back from host memory if it
was offloaded), evicting least recently used **idle** models to host memory (offload) when the
block does not fit, and marks it busy (a refcount, so concurrent batches may share it);
``release(model)`` marks one use done. When even evicting every idle model cannot make room,
``acquire`` raises :class:`MemoryPoolExhausted` and changes nothing.

Placement inside the pool is best fit over the free ranges (lowest offset among equal sizes),
with free ranges coalesced: the allocator lab's own free list
(:class:`stowplan.memlab.freelist.FreeList`, the engine of its best-fit family). When the
free bytes suffice but no single block does, idle resident models are *relocated* inside the
pool (``Residency.relocated``; the caller copies them device to device, far cheaper than an
offload and a later prefetch) before anything is offloaded, so a model is only offloaded when
the pool's capacity, not its fragmentation, demands it; the agent's residency then agrees with
placement, which counts bytes, not holes. Busy models never move.
All state changes happen under one lock; time comes from the injected
clock. Callers: :mod:`stowplan.agent.serving` (the ``Residency`` seam) and the GPUNode status
sync (via :meth:`ResidencyManager.snapshot` and :meth:`ResidencyManager.stats`).

Pure Python bookkeeping: this module must not import onnxruntime, placement or kopf (from the
lab only the standard-library-only free list and compaction helpers), and does
no I/O; applying an offload/prefetch to a runtime session is the caller's job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stowplan.agent.errors import AgentError
from stowplan.memlab.compaction import best_fit_into, gaps
from stowplan.memlab.freelist import FreeList

DEFAULT_ALIGNMENT_BYTES = 256  # cudaMalloc alignment; every block starts on this boundary
MAX_WINDOWS = 64  # candidate windows tried when relocating idle models to make room


class ResidencyError(AgentError):
    """Base of the residency manager's errors (part of the agent's exception tree)."""

    status_code = 503


class MemoryPoolExhausted(ResidencyError):
    """The model cannot be made resident, even after offloading every idle model."""


class UnknownModelError(ResidencyError):
    """``acquire``/``release``/``unregister`` of a model that is not registered."""

    status_code = 404


class ModelBusyError(ResidencyError):
    """The model is in use (refcount > 0): it cannot be unregistered or re-registered."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Residency(_Frozen):
    """What :meth:`ResidencyManager.acquire` did: where the model is and what it cost."""

    model: str
    offset: int = Field(ge=0)
    size_bytes: int = Field(ge=0)
    prefetched: bool  # it had to be brought in (first load or back from host memory)
    offloaded: tuple[str, ...] = ()  # idle models offloaded to make room, LRU first
    relocated: tuple[str, ...] = ()  # idle resident models moved inside the pool (D2D copies)


class ModelResidency(_Frozen):
    """One model's row in :meth:`ResidencyManager.snapshot` (what GPUNode.status shows)."""

    name: str
    state: Literal["resident", "offloaded"]
    weights_bytes: int = Field(ge=0)
    workspace_bytes: int = Field(ge=0)
    offset: int | None  # None while offloaded
    last_used: float | None  # clock time of the last acquire/release; None if never used
    refcount: int = Field(default=0, ge=0)


class PoolStats(_Frozen):
    """Pool-level numbers for metrics and GPUNode.status."""

    reserved_bytes: int
    used_bytes: int
    free_bytes: int
    largest_free_block_bytes: int
    resident_models: int
    offloaded_models: int
    offloads: int  # resident -> host memory evictions so far
    prefetches: int  # host memory -> resident transfers so far (not counting first loads)
    loads: int  # first residencies
    relocations: int = 0  # idle models moved inside the pool to merge free space


class _Model:
    __slots__ = (
        "last_used",
        "loaded",
        "name",
        "offset",
        "refcount",
        "size",
        "weights",
        "workspace",
    )

    def __init__(self, name: str, weights: int, workspace: int, size: int) -> None:
        self.name = name
        self.weights = weights
        self.workspace = workspace
        self.size = size
        self.offset: int | None = None
        self.refcount = 0
        self.last_used: float | None = None
        self.loaded = False  # has been resident at least once


class ResidencyManager:
    """Model residency in a device-memory pool reserved once (see the module docstring)."""

    def __init__(
        self,
        pool_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        alignment_bytes: int = DEFAULT_ALIGNMENT_BYTES,
        relocate: bool = True,
        record: bool = False,
    ) -> None:
        if pool_bytes < 0:
            raise ValueError("pool_bytes must be >= 0")
        if alignment_bytes <= 0:
            raise ValueError("alignment_bytes must be > 0")
        self.pool_bytes = pool_bytes
        self.clock = clock
        self.alignment_bytes = alignment_bytes
        self.relocate = relocate
        self._free = FreeList.span(0, pool_bytes)
        self._models: dict[str, _Model] = {}
        self._lock = threading.RLock()
        self._offloads = 0
        self._prefetches = 0
        self._loads = 0
        self._relocations = 0
        # with ``record``: every block placed in or taken out of the pool, in order, as
        # ("alloc" | "free", model, bytes); the allocator lab replays it (``memsim --residency``)
        self.events: list[tuple[str, str, int]] | None = [] if record else None

    # -- registration -------------------------------------------------------------------------
    def register(self, model: str, weights_bytes: int, workspace_bytes: int) -> None:
        """Add a model (offloaded, then made resident at once if it fits without evicting).

        Raises :class:`MemoryPoolExhausted` if the model alone is larger than the pool, and
        :class:`ModelBusyError` when re-registering a model that is in use. Re-registering an
        idle model replaces it.
        """
        if weights_bytes < 0 or workspace_bytes < 0:
            raise ValueError("sizes must be >= 0")
        a = self.alignment_bytes
        size = -(-(weights_bytes + workspace_bytes) // a) * a
        if size > self.pool_bytes:
            raise MemoryPoolExhausted(
                f"{model}: needs {size} bytes (weights {weights_bytes} + workspace "
                f"{workspace_bytes}), the pool has {self.pool_bytes}"
            )
        with self._lock:
            old = self._models.get(model)
            if old is not None:
                if old.refcount:
                    raise ModelBusyError(f"{model} is in use; release it before re-registering")
                self._drop(old)
            m = _Model(model, weights_bytes, workspace_bytes, size)
            self._models[model] = m
            got = self._free.take(size) if size else (0, 0)
            if got is not None:
                m.offset = got[0]
                m.loaded = True
                self._loads += 1
                self._note("alloc", m)

    def unregister(self, model: str) -> None:
        """Forget a model and free its block. Raises :class:`ModelBusyError` while in use."""
        with self._lock:
            m = self._get(model)
            if m.refcount:
                raise ModelBusyError(f"{model} is in use (refcount {m.refcount})")
            self._drop(m)

    # -- use ----------------------------------------------------------------------------------
    def acquire(self, model: str) -> Residency:
        """Make ``model`` resident (offloading LRU idle models if needed) and mark it busy."""
        with self._lock:
            m = self._get(model)
            now = self.clock()
            if m.offset is not None:
                m.refcount += 1
                m.last_used = now
                return Residency(model=model, offset=m.offset, size_bytes=m.size, prefetched=False)
            victims, layout = self._plan_room(m)
            for v in victims:
                assert v.offset is not None
                if v.size:
                    self._free.give(v.offset, v.size)
                v.offset = None
                self._offloads += 1
                self._note("free", v)
            moved: list[str] = []
            if layout is None:
                got = self._free.take(m.size) if m.size else (0, 0)
                assert got is not None  # _plan_room guaranteed room
                off = got[0]
            else:
                off = layout.pop(m.name)
                for x in self._models.values():
                    if x.name in layout and x.offset != layout[x.name]:
                        x.offset = layout[x.name]
                        moved.append(x.name)
                        self._note("free", x)  # a relocation: the old block goes, a new one comes
                        self._note("alloc", x)
                self._relocations += len(moved)
                m.offset = off
                self._rebuild_free()
            m.offset = off
            self._note("alloc", m)
            if m.loaded:
                self._prefetches += 1
            else:
                m.loaded = True
                self._loads += 1
            m.refcount += 1
            m.last_used = now
            return Residency(
                model=model,
                offset=off,
                size_bytes=m.size,
                prefetched=True,
                offloaded=tuple(v.name for v in victims),
                relocated=tuple(sorted(moved)),
            )

    def release(self, model: str) -> None:
        """One use of ``model`` is done (it stays resident, now idle if the refcount is 0)."""
        with self._lock:
            m = self._get(model)
            if m.refcount <= 0:
                raise ResidencyError(f"{model} released more often than acquired")
            m.refcount -= 1
            m.last_used = self.clock()

    def offload(self, model: str) -> bool:
        """Evict an idle resident model to host memory now; False if busy or not resident."""
        with self._lock:
            m = self._get(model)
            if m.offset is None or m.refcount:
                return False
            if m.size:
                self._free.give(m.offset, m.size)
            m.offset = None
            self._offloads += 1
            self._note("free", m)
            return True

    # -- views --------------------------------------------------------------------------------
    def snapshot(self) -> list[ModelResidency]:
        """Every registered model, resident ones first by offset, then offloaded by name."""
        with self._lock:
            rows = [
                ModelResidency(
                    name=m.name,
                    state="resident" if m.offset is not None else "offloaded",
                    weights_bytes=m.weights,
                    workspace_bytes=m.workspace,
                    offset=m.offset,
                    last_used=m.last_used,
                    refcount=m.refcount,
                )
                for m in self._models.values()
            ]
        return sorted(rows, key=lambda r: (r.offset is None, r.offset or 0, r.name))

    def stats(self) -> PoolStats:
        with self._lock:
            free = self._free.total()
            resident = sum(1 for m in self._models.values() if m.offset is not None)
            return PoolStats(
                reserved_bytes=self.pool_bytes,
                used_bytes=self.pool_bytes - free,
                free_bytes=free,
                largest_free_block_bytes=self._free.largest(),
                resident_models=resident,
                offloaded_models=len(self._models) - resident,
                offloads=self._offloads,
                prefetches=self._prefetches,
                loads=self._loads,
                relocations=self._relocations,
            )

    def is_resident(self, model: str) -> bool:
        with self._lock:
            return self._get(model).offset is not None

    # -- internals ----------------------------------------------------------------------------
    def _get(self, model: str) -> _Model:
        m = self._models.get(model)
        if m is None:
            raise UnknownModelError(f"model {model!r} is not registered")
        return m

    def _note(self, kind: str, m: _Model) -> None:
        if self.events is not None and m.size:
            self.events.append((kind, m.name, m.size))

    def _drop(self, m: _Model) -> None:
        if m.offset is not None:
            self._note("free", m)
        if m.offset is not None and m.size:
            self._free.give(m.offset, m.size)
        m.offset = None
        del self._models[m.name]

    def _plan_room(self, m: _Model) -> tuple[list[_Model], dict[str, int] | None]:
        """Fewest LRU idle models to offload so that ``m`` fits, and a new layout if needed.

        For k = 0, 1, ... offloaded models (least recently used first): if a free block fits
        once they are gone, no layout is needed; otherwise, with ``relocate``, idle resident
        models may be moved inside the pool (busy ones are pinned) to merge free space. A move
        is a device-to-device copy, far cheaper than an offload plus a later prefetch, so it is
        preferred to one more offload. Returns (victims, layout or None: name -> offset,
        ``m`` included).
        """
        if m.size == 0 or self._free.largest() >= m.size:
            return [], None
        idle = sorted(
            (x for x in self._models.values() if x.offset is not None and x.refcount == 0),
            key=lambda x: (x.last_used is not None, x.last_used or 0.0, x.name),
        )
        busy = [x for x in self._models.values() if x.offset is not None and x.refcount > 0]
        trial = self._free.copy()
        for k in range(len(idle) + 1):
            if k:
                v = idle[k - 1]
                assert v.offset is not None
                if v.size:
                    trial.give(v.offset, v.size)
                if trial.largest() >= m.size:
                    return idle[:k], None
            if self.relocate:
                layout = self._pack(busy, idle[k:], m)
                if layout is not None:
                    return idle[:k], layout
        held = sum(x.size for x in busy)
        raise MemoryPoolExhausted(
            f"{m.name}: needs {m.size} contiguous bytes; pool {self.pool_bytes}, "
            f"{held} bytes held by busy models, largest block after offloading every idle "
            f"model {trial.largest()}"
        )

    def _pack(
        self, pinned: list[_Model], movable: list[_Model], m: _Model
    ) -> dict[str, int] | None:
        """A layout with the pinned models in place and ``m`` plus every movable model placed.

        Prefers the window for ``m`` that displaces the fewest movable bytes (fewest copies):
        candidate windows start at free-block and model boundaries; displaced models are
        re-placed best fit into the space left. Falls back to packing everything best fit,
        largest first. None if nothing works.
        """
        total = sum(x.size for x in pinned) + sum(x.size for x in movable) + m.size
        if total > self.pool_bytes:
            return None
        fixed = [(x.offset or 0, x.size) for x in pinned]
        starts = {0}
        for x in (*pinned, *movable):
            starts.add(x.offset or 0)
            starts.add((x.offset or 0) + x.size)
        candidates = []
        for w in starts:
            end = w + m.size
            if end > self.pool_bytes or any(o < end and w < o + sz for o, sz in fixed):
                continue
            hit = [x for x in movable if (x.offset or 0) < end and w < (x.offset or 0) + x.size]
            candidates.append((sum(x.size for x in hit), w, hit))
        candidates.sort(key=lambda c: (c[0], c[1]))
        for _, w, hit in candidates[:MAX_WINDOWS]:
            kept = [x for x in movable if x not in hit]
            taken = [*fixed, *((x.offset or 0, x.size) for x in kept), (w, m.size)]
            placed = best_fit_into(gaps(taken, self.pool_bytes), [(x.name, x.size) for x in hit])
            if placed is not None:
                layout = {x.name: x.offset or 0 for x in kept}
                layout.update(placed)
                layout[m.name] = w
                return layout
        return best_fit_into(
            gaps(fixed, self.pool_bytes), [(x.name, x.size) for x in (m, *movable)]
        )

    def _rebuild_free(self) -> None:
        """Recompute the free list from the resident models (after a relocation)."""
        free = FreeList()
        cursor = 0
        for off, size in sorted(
            (x.offset, x.size) for x in self._models.values() if x.offset is not None and x.size
        ):
            if off > cursor:
                free.insert(cursor, off - cursor)
            cursor = max(cursor, off + size)
        if cursor < self.pool_bytes:
            free.insert(cursor, self.pool_bytes - cursor)
        self._free = free


__all__ = [
    "MemoryPoolExhausted",
    "ModelBusyError",
    "ModelResidency",
    "PoolStats",
    "Residency",
    "ResidencyError",
    "ResidencyManager",
    "UnknownModelError",
]
