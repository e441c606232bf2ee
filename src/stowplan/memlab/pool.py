"""The residency allocator: named model blocks carved from one pool reserved once.

This is the one implementation of the agent's device-memory placement: the agent's
:class:`stowplan.agent.memory.ResidencyManager` is a thread-safe shell over a
:class:`ResidencyPool`, and the lab (:mod:`stowplan.memlab.residency`, ``stowplan memsim`` on a
``.stwres.json`` trace) replays the agent's recorded request sequence through the same class,
once per :data:`POLICIES` entry, to measure which placement serves it with the least traffic.

A model needs one contiguous block of ``weights + workspace`` bytes (rounded up to the
alignment) while it is *resident*. ``acquire`` makes it resident, evicting least recently used
**idle** models (offload) when the block does not fit, and marks it busy (a refcount);
``release`` marks one use done. Placement is the policy's fit over the pool's free ranges
(:class:`stowplan.memlab.freelist.FreeList`: best fit, or first fit = lowest offset). With
``relocate``, when the free bytes suffice but no single range does, idle resident models are
moved inside the pool (device-to-device copies, far cheaper than an offload plus a later
prefetch) before anything more is offloaded; busy models never move.

With ``record`` the pool logs both what it was asked (:attr:`ResidencyPool.requests`, the
replayable trace) and what it did (:attr:`ResidencyPool.events`: every block placed or taken
out, with its offset). Standard library only (the agent imports it): no lock (the caller holds
one), no device, no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from stowplan.memlab.errors import MemlabError
from stowplan.memlab.freelist import FreeList

DEFAULT_ALIGNMENT_BYTES = 256  # cudaMalloc alignment; every block starts on this boundary
MAX_WINDOWS = 64  # candidate windows tried when relocating idle models to make room

#: what a recorded request is: (op, model, weights bytes, workspace bytes); sizes only for
#: "register", 0 otherwise
Request = tuple[str, str, int, int]
#: what the pool did: ("alloc" | "free", model, block bytes, offset)
BlockEvent = tuple[str, str, int, int]


class PoolError(MemlabError):
    """Base of the residency pool's errors."""


class PoolExhausted(PoolError):
    """The model cannot be made resident, even after offloading every idle model."""


class UnknownBlockError(PoolError):
    """A request names a model that is not registered."""


class BlockBusyError(PoolError):
    """The model is in use (refcount > 0): it cannot be unregistered or re-registered."""


class ReleaseError(PoolError):
    """A model released more often than acquired."""


@dataclass(frozen=True)
class PlacementPolicy:
    """How blocks are placed: which fit, and whether idle blocks may be moved to make room."""

    name: str
    fit: Literal["best", "first"]
    relocate: bool


#: the placements the lab compares on residency traces (``stowplan memsim X.stwres.json``)
POLICIES: dict[str, PlacementPolicy] = {
    p.name: p
    for p in (
        PlacementPolicy("bestfit-relocate", "best", True),
        PlacementPolicy("bestfit", "best", False),
        PlacementPolicy("firstfit-relocate", "first", True),
        PlacementPolicy("firstfit", "first", False),
    )
}

#: the policy the agent runs: the one the lab measures best on residency traces (fewest bytes
#: prefetched back, then fewest relocated; tests/memlab/test_residency_trace.py checks it)
AGENT_POLICY = "bestfit-relocate"


@dataclass(frozen=True)
class Placement:
    """What :meth:`ResidencyPool.acquire` did: where the model is and what it cost."""

    offset: int
    size_bytes: int
    prefetched: bool  # it had to be brought in (first load or back from host memory)
    offloaded: tuple[str, ...] = ()  # idle models offloaded to make room, LRU first
    relocated: tuple[str, ...] = ()  # idle resident models moved inside the pool


class Block:
    """One registered model's block and use."""

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
        self.offset: int | None = None  # None while offloaded
        self.refcount = 0
        self.last_used: float | None = None
        self.loaded = False  # has been resident at least once


class ResidencyPool:
    """Model residency in a pool of ``pool_bytes`` (see the module docstring)."""

    def __init__(
        self,
        pool_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        alignment_bytes: int = DEFAULT_ALIGNMENT_BYTES,
        policy: str = AGENT_POLICY,
        record: bool = False,
    ) -> None:
        if pool_bytes < 0:
            raise ValueError("pool_bytes must be >= 0")
        if alignment_bytes <= 0:
            raise ValueError("alignment_bytes must be > 0")
        if policy not in POLICIES:
            raise ValueError(f"unknown placement policy {policy!r} (known: {', '.join(POLICIES)})")
        self.pool_bytes = pool_bytes
        self.clock = clock
        self.alignment_bytes = alignment_bytes
        self.policy = POLICIES[policy]
        self.free = FreeList.span(0, pool_bytes)
        self.models: dict[str, Block] = {}
        self.loads = self.offloads = self.prefetches = self.relocations = 0
        self.prefetched_bytes = 0  # bytes brought back from host memory (not first loads)
        self.relocated_bytes = 0  # bytes copied inside the pool
        self.refused = 0  # acquires refused: no room even after offloading every idle model
        self.requests: list[Request] | None = [] if record else None
        self.events: list[BlockEvent] | None = [] if record else None

    # -- requests -----------------------------------------------------------------------------
    def register(self, model: str, weights_bytes: int, workspace_bytes: int) -> None:
        """Add a model (made resident at once if it fits without evicting; else offloaded).

        Raises :class:`PoolExhausted` if the model alone is larger than the pool and
        :class:`BlockBusyError` when re-registering a model in use (an idle one is replaced).
        """
        if weights_bytes < 0 or workspace_bytes < 0:
            raise ValueError("sizes must be >= 0")
        a = self.alignment_bytes
        size = -(-(weights_bytes + workspace_bytes) // a) * a
        if size > self.pool_bytes:
            raise PoolExhausted(
                f"{model}: needs {size} bytes (weights {weights_bytes} + workspace "
                f"{workspace_bytes}), the pool has {self.pool_bytes}"
            )
        old = self.models.get(model)
        if old is not None and old.refcount:
            raise BlockBusyError(f"{model} is in use; release it before re-registering")
        self._ask("register", model, weights_bytes, workspace_bytes)
        if old is not None:
            self._drop(old)
        m = Block(model, weights_bytes, workspace_bytes, size)
        self.models[model] = m
        got = self._take(size) if size else (0, 0)
        if got is not None:
            m.offset = got[0]
            m.loaded = True
            self.loads += 1
            self._note("alloc", m)

    def unregister(self, model: str) -> None:
        """Forget a model and free its block. Raises :class:`BlockBusyError` while in use."""
        m = self.get(model)
        if m.refcount:
            raise BlockBusyError(f"{model} is in use (refcount {m.refcount})")
        self._ask("unregister", model)
        self._drop(m)

    def acquire(self, model: str) -> Placement:
        """Make ``model`` resident (offloading LRU idle models if needed) and mark it busy."""
        m = self.get(model)
        self._ask("acquire", model)  # also when refused: a replay refuses it too
        now = self.clock()
        if m.offset is not None:
            m.refcount += 1
            m.last_used = now
            return Placement(m.offset, m.size, prefetched=False)
        try:
            victims, layout = self._plan_room(m)  # raises before anything changes
        except PoolExhausted:
            self.refused += 1
            raise
        for v in victims:
            self._evict(v)
        moved: list[str] = []
        if layout is None:
            got = self._take(m.size) if m.size else (0, 0)
            assert got is not None  # _plan_room guaranteed room
            off = got[0]
        else:
            off = layout.pop(m.name)
            for x in self.models.values():
                if x.name in layout and x.offset != layout[x.name]:
                    self._note("free", x)  # a relocation: the old block goes, a new one comes
                    x.offset = layout[x.name]
                    self._note("alloc", x)
                    moved.append(x.name)
                    self.relocated_bytes += x.size
            self.relocations += len(moved)
            m.offset = off
            self._rebuild_free()
        m.offset = off
        self._note("alloc", m)
        if m.loaded:
            self.prefetches += 1
            self.prefetched_bytes += m.size
        else:
            m.loaded = True
            self.loads += 1
        m.refcount += 1
        m.last_used = now
        return Placement(
            off,
            m.size,
            prefetched=True,
            offloaded=tuple(v.name for v in victims),
            relocated=tuple(sorted(moved)),
        )

    def release(self, model: str) -> None:
        """One use of ``model`` is done (it stays resident, now idle if the refcount is 0)."""
        m = self.get(model)
        if m.refcount <= 0:
            raise ReleaseError(f"{model} released more often than acquired")
        self._ask("release", model)
        m.refcount -= 1
        m.last_used = self.clock()

    def offload(self, model: str) -> bool:
        """Evict an idle resident model to host memory now; False if busy or not resident."""
        m = self.get(model)
        if m.offset is None or m.refcount:
            return False
        self._ask("offload", model)
        self._evict(m)
        return True

    # -- views --------------------------------------------------------------------------------
    def get(self, model: str) -> Block:
        m = self.models.get(model)
        if m is None:
            raise UnknownBlockError(f"model {model!r} is not registered")
        return m

    def blocks(self) -> Iterator[Block]:
        return iter(self.models.values())

    def free_bytes(self) -> int:
        return self.free.total()

    def largest_free(self) -> int:
        return self.free.largest()

    # -- internals ----------------------------------------------------------------------------
    def _ask(self, op: str, model: str, weights: int = 0, workspace: int = 0) -> None:
        if self.requests is not None:
            self.requests.append((op, model, weights, workspace))

    def _note(self, kind: str, m: Block) -> None:
        if self.events is not None and m.size:
            assert m.offset is not None
            self.events.append((kind, m.name, m.size, m.offset))

    def _take(self, size: int) -> tuple[int, int] | None:
        if self.policy.fit == "best":
            return self.free.take(size)
        return self.free.take_lowest(size)

    def _evict(self, m: Block) -> None:
        assert m.offset is not None
        self._note("free", m)
        if m.size:
            self.free.give(m.offset, m.size)
        m.offset = None
        self.offloads += 1

    def _drop(self, m: Block) -> None:
        if m.offset is not None:
            self._note("free", m)
            if m.size:
                self.free.give(m.offset, m.size)
        m.offset = None
        del self.models[m.name]

    def _plan_room(self, m: Block) -> tuple[list[Block], dict[str, int] | None]:
        """Fewest LRU idle models to offload so that ``m`` fits, and a new layout if needed.

        For k = 0, 1, ... offloaded models (least recently used first): if a free block fits
        once they are gone, no layout is needed; otherwise, with ``relocate``, idle resident
        models may be moved inside the pool (busy ones are pinned) to merge free space; a move
        is preferred to one more offload. Returns (victims, layout or None: name -> offset,
        ``m`` included).
        """
        if m.size == 0 or self.free.largest() >= m.size:
            return [], None
        idle = sorted(
            (x for x in self.models.values() if x.offset is not None and x.refcount == 0),
            key=lambda x: (x.last_used is not None, x.last_used or 0.0, x.name),
        )
        busy = [x for x in self.models.values() if x.offset is not None and x.refcount > 0]
        trial = self.free.copy()
        for k in range(len(idle) + 1):
            if k:
                v = idle[k - 1]
                assert v.offset is not None
                if v.size:
                    trial.give(v.offset, v.size)
                if trial.largest() >= m.size:
                    return idle[:k], None
            if self.policy.relocate:
                layout = self._pack(busy, idle[k:], m)
                if layout is not None:
                    return idle[:k], layout
        held = sum(x.size for x in busy)
        raise PoolExhausted(
            f"{m.name}: needs {m.size} contiguous bytes; pool {self.pool_bytes}, "
            f"{held} bytes held by busy models, largest block after offloading every idle "
            f"model {trial.largest()}"
        )

    def _pack(self, pinned: list[Block], movable: list[Block], m: Block) -> dict[str, int] | None:
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
        taken = [(x.offset, x.size) for x in self.models.values() if x.offset is not None]
        free = FreeList()
        for start, end in gaps([(o, s) for o, s in taken if s], self.pool_bytes):
            free.insert(start, end - start)
        self.free = free


def replay(
    requests: Sequence[Request],
    pool_bytes: int,
    alignment_bytes: int = DEFAULT_ALIGNMENT_BYTES,
    policy: str = AGENT_POLICY,
) -> ResidencyPool:
    """Drive a fresh recording pool with a request sequence (a tick clock: request index).

    A request the pool refuses (:class:`PoolExhausted`) is skipped, as the agent answers it
    with a 503 and goes on (and so is the release that follows an acquire this policy refused
    where the recorded one did not); the pool's counters say what the rest cost.
    """
    tick = iter(range(1 << 62))
    pool = ResidencyPool(
        pool_bytes, lambda: float(next(tick)), alignment_bytes, policy, record=True
    )
    for op, model, weights, workspace in requests:
        try:
            if op == "register":
                pool.register(model, weights, workspace)
            elif op == "acquire":
                pool.acquire(model)
            elif op == "release":
                pool.release(model)
            elif op == "offload":
                pool.offload(model)
            elif op == "unregister":
                pool.unregister(model)
            else:
                raise PoolError(f"unknown residency request {op!r}")
        except (PoolExhausted, ReleaseError):
            continue
    return pool


def gaps(taken: Sequence[tuple[int, int]], limit: int) -> list[list[int]]:
    """Free [start, end) ranges of [0, limit) around the (offset, size) blocks in ``taken``."""
    out: list[list[int]] = []
    cursor = 0
    for off, size in sorted(taken):
        if off > cursor:
            out.append([cursor, off])
        cursor = max(cursor, off + size)
    if cursor < limit:
        out.append([cursor, limit])
    return out


def best_fit_into(free: list[list[int]], items: Sequence[tuple[str, int]]) -> dict[str, int] | None:
    """Place (name, size) items largest first, each into the smallest gap that holds it.

    Returns name -> offset, or None if some item fits nowhere. Mutates ``free``.
    """
    layout: dict[str, int] = {}
    for name, size in sorted(items, key=lambda x: (-x[1], x[0])):
        best = -1
        for g, (start, end) in enumerate(free):
            if end - start >= size and (best < 0 or end - start < free[best][1] - free[best][0]):
                best = g
        if best < 0:
            return None
        layout[name] = free[best][0]
        free[best][0] += size
    return layout


__all__ = [
    "AGENT_POLICY",
    "DEFAULT_ALIGNMENT_BYTES",
    "POLICIES",
    "Block",
    "BlockBusyError",
    "BlockEvent",
    "Placement",
    "PlacementPolicy",
    "PoolError",
    "PoolExhausted",
    "ReleaseError",
    "Request",
    "ResidencyPool",
    "UnknownBlockError",
    "best_fit_into",
    "gaps",
    "replay",
]
