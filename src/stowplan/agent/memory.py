"""The agent's cached device allocator: model residency in one device-memory pool.

A :class:`ResidencyManager` owns a pool of ``pool_bytes`` reserved once (the agent reserves it
from the device arena at start-up). Each registered model needs one contiguous block of
``weights_bytes + workspace_bytes`` carved from the pool while it is *resident*.
``acquire(model)`` makes a model resident (prefetching it back from host memory if it was
offloaded), evicting least recently used **idle** models (offload) when the block does not fit,
and marks it busy; ``release(model)`` marks one use done. When even evicting every idle model
cannot make room, ``acquire`` raises :class:`MemoryPoolExhausted` and changes nothing.

The placement itself (fit, LRU eviction, relocating idle models to merge free space) is not
here: it is the allocator lab's :class:`stowplan.memlab.pool.ResidencyPool`, run with the
policy the lab measures best on residency traces (:data:`stowplan.memlab.pool.AGENT_POLICY`),
so the lab and the agent are one implementation. This module adds what the agent needs around
it: one lock, the agent's exception tree (status codes), the typed views GPUNode.status and the
metrics read, and the trace file (``record``: :meth:`ResidencyManager.write_trace`, replayed
by ``stowplan memsim``). Callers: :mod:`stowplan.agent.registry` and the GPUNode status sync.

Pure bookkeeping: this module must not import onnxruntime, placement or kopf and does no I/O
but writing the trace on request; applying an offload/prefetch to a session is the caller's
job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stowplan.agent.errors import AgentError
from stowplan.memlab import pool as core
from stowplan.memlab.residency import ResidencyTrace

DEFAULT_ALIGNMENT_BYTES = core.DEFAULT_ALIGNMENT_BYTES


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


@dataclass(frozen=True, slots=True)
class Residency:
    """What :meth:`ResidencyManager.acquire` did: where the model is and what it cost (a
    dataclass, not a validated model: one is made per batch, from the pool's own numbers)."""

    model: str
    offset: int
    size_bytes: int
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


class _Translated:
    """Context manager: the lab pool's errors as the agent's (same message, the agent's
    status code). A class, not a generator: it wraps every batch's acquire and release."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            return
        for theirs, ours in _TRANSLATIONS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc


_TRANSLATIONS: tuple[tuple[type[Exception], type[ResidencyError]], ...] = (
    (core.PoolExhausted, MemoryPoolExhausted),
    (core.UnknownBlockError, UnknownModelError),
    (core.BlockBusyError, ModelBusyError),
    (core.ReleaseError, ResidencyError),
)
_translated = _Translated()


class ResidencyManager:
    """Model residency in a device-memory pool reserved once (see the module docstring)."""

    def __init__(
        self,
        pool_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        alignment_bytes: int = DEFAULT_ALIGNMENT_BYTES,
        relocate: bool = True,
        record: bool = False,
        policy: str | None = None,
    ) -> None:
        """``policy`` names a :data:`stowplan.memlab.pool.POLICIES` entry (default: the lab's
        best, or its best fit without relocation when ``relocate`` is False)."""
        name = policy or (core.AGENT_POLICY if relocate else "bestfit")
        self._pool = core.ResidencyPool(pool_bytes, clock, alignment_bytes, name, record)
        self.pool_bytes = pool_bytes
        self.clock = clock
        self.alignment_bytes = alignment_bytes
        self.policy = name
        self._lock = threading.RLock()

    @property
    def events(self) -> list[core.BlockEvent] | None:
        """With ``record``: every block placed in or taken out of the pool, in order, as
        ("alloc" | "free", model, bytes, offset); None otherwise."""
        return self._pool.events

    # -- registration -------------------------------------------------------------------------
    def register(self, model: str, weights_bytes: int, workspace_bytes: int) -> None:
        """Add a model (offloaded, then made resident at once if it fits without evicting).

        Raises :class:`MemoryPoolExhausted` if the model alone is larger than the pool, and
        :class:`ModelBusyError` when re-registering a model that is in use. Re-registering an
        idle model replaces it.
        """
        with self._lock, _translated:
            self._pool.register(model, weights_bytes, workspace_bytes)

    def unregister(self, model: str) -> None:
        """Forget a model and free its block. Raises :class:`ModelBusyError` while in use."""
        with self._lock, _translated:
            self._pool.unregister(model)

    # -- use ----------------------------------------------------------------------------------
    def acquire(self, model: str) -> Residency:
        """Make ``model`` resident (offloading LRU idle models if needed) and mark it busy."""
        with self._lock, _translated:
            got = self._pool.acquire(model)
        return Residency(
            model=model,
            offset=got.offset,
            size_bytes=got.size_bytes,
            prefetched=got.prefetched,
            offloaded=got.offloaded,
            relocated=got.relocated,
        )

    def release(self, model: str) -> None:
        """One use of ``model`` is done (it stays resident, now idle if the refcount is 0)."""
        with self._lock, _translated:
            self._pool.release(model)

    def offload(self, model: str) -> bool:
        """Evict an idle resident model to host memory now; False if busy or not resident."""
        with self._lock, _translated:
            return self._pool.offload(model)

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
                for m in self._pool.blocks()
            ]
        return sorted(rows, key=lambda r: (r.offset is None, r.offset or 0, r.name))

    def stats(self) -> PoolStats:
        with self._lock:
            p = self._pool
            free = p.free_bytes()
            resident = sum(1 for m in p.blocks() if m.offset is not None)
            return PoolStats(
                reserved_bytes=self.pool_bytes,
                used_bytes=self.pool_bytes - free,
                free_bytes=free,
                largest_free_block_bytes=p.largest_free(),
                resident_models=resident,
                offloaded_models=len(p.models) - resident,
                offloads=p.offloads,
                prefetches=p.prefetches,
                loads=p.loads,
                relocations=p.relocations,
            )

    def is_resident(self, model: str) -> bool:
        with self._lock, _translated:
            return self._pool.get(model).offset is not None

    # -- the trace ----------------------------------------------------------------------------
    def trace(self) -> ResidencyTrace:
        """What this manager was asked and did so far (needs ``record``), in the lab's format."""
        with self._lock:
            p = self._pool
            if p.requests is None or p.events is None:
                raise ResidencyError("the residency manager was not created with record=True")
            return ResidencyTrace(
                pool_bytes=self.pool_bytes,
                alignment_bytes=self.alignment_bytes,
                policy=self.policy,
                requests=list(p.requests),
                events=list(p.events),
            )

    def write_trace(self, path: Path) -> Path:
        """Write :meth:`trace` to ``path`` (a ``.stwres.json`` file ``stowplan memsim`` replays)."""
        return self.trace().save(path)


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
