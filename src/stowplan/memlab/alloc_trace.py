"""The in-memory allocation trace and its compact on-disk form (``.stwtrace.npz``).

A :class:`Trace` is what the parser produces from a TensorFlow ``__LOG_MEMORY__`` log and what
the simulator replays. Events are kept in numpy arrays (one row per event, one row per
allocation "slot"), so a big log is parsed once, saved with :func:`save_compact` and reloaded in
milliseconds with :func:`load_compact`. Callers: :mod:`stowplan.memlab.parser`,
:mod:`stowplan.memlab.simulate`, the ``memsim`` command. This module does no text parsing and no
simulation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stowplan.memlab.errors import TraceFileError

# Event kinds.
ALLOC = 0  # tensor buffer allocated (MemoryLogTensorAllocation with a buffer)
FREE = 1  # matched MemoryLogTensorDeallocation
RAW_ALLOC = 2  # MemoryLogRawAllocation
RAW_FREE = 3  # matched MemoryLogRawDeallocation
STEP = 4  # a new execution step starts (first allocation carrying a new positive step id)

#: Sentinel used in replay op lists for a step boundary (allocs are slot >= 0, frees ~slot).
STEP_OP = -(1 << 62)

COMPACT_SUFFIX = ".stwtrace.npz"
FORMAT_VERSION = 1


class ParseStats(BaseModel):
    """Counts of one parsed log, defined exactly as in the data README."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lines: int = 0
    alloc_records: int = 0  # MemoryLogTensorAllocation with a buffer
    alloc_records_without_buffer: int = 0
    dealloc_records: int = 0
    dealloc_matched: int = 0
    dealloc_unmatched: int = 0
    output_records: int = 0
    other_records: dict[str, int] = Field(default_factory=dict)
    total_requested_bytes: int = 0
    peak_live_bytes_by_allocator: dict[str, int] = Field(default_factory=dict)
    distinct_sizes: int = 0
    distinct_kernel_names: int = 0
    malformed_records: int = 0
    malformed_examples: list[tuple[int, str]] = Field(default_factory=list)


@dataclass(frozen=True)
class Trace:
    """A parsed allocation trace.

    Per event: ``kinds`` (ALLOC/FREE/RAW_ALLOC/RAW_FREE/STEP) and ``slots`` (the allocation slot
    the event refers to; -1 for STEP). Per slot: requested ``sizes``, ``allocated`` bytes as the
    recording allocator reported them, the allocator name index, step id and kernel name index.
    ``phases`` holds ``(marker name, event index)`` for ``#### tftrace phase X begin`` lines.
    """

    source: str
    kinds: np.ndarray
    slots: np.ndarray
    sizes: np.ndarray
    allocated: np.ndarray
    slot_allocator: np.ndarray
    slot_step: np.ndarray
    slot_kernel: np.ndarray
    allocator_names: tuple[str, ...]
    kernel_names: tuple[str, ...]
    phases: tuple[tuple[str, int], ...]
    stats: ParseStats

    @property
    def num_events(self) -> int:
        return int(self.kinds.shape[0])

    def main_allocator(self) -> str:
        """The allocator name with the most tensor allocations (``cpu`` in the shipped logs)."""
        if not self.allocator_names:
            return ""
        alloc_slots = self.slots[self.kinds == ALLOC]
        counts = np.bincount(self.slot_allocator[alloc_slots], minlength=len(self.allocator_names))
        return self.allocator_names[int(np.argmax(counts))]

    def replay_ops(
        self, allocator_name: str | None = None, include_raw: bool = False
    ) -> tuple[list[int], list[int]]:
        """The op list the simulator replays, and the per-slot requested sizes.

        Ops: ``slot`` (>= 0) allocates, ``~slot`` frees, :data:`STEP_OP` marks a step boundary.
        Only the events of one allocator name are kept (default: :meth:`main_allocator`).
        Raw allocations are excluded unless ``include_raw`` (the README's peak excludes them).
        """
        name = self.main_allocator() if allocator_name is None else allocator_name
        kinds = self.kinds
        slots = self.slots
        keep = (kinds == ALLOC) | (kinds == FREE) | (kinds == STEP)
        if include_raw:
            keep |= (kinds == RAW_ALLOC) | (kinds == RAW_FREE)
        if name in self.allocator_names:
            idx = self.allocator_names.index(name)
            slot_ok = np.zeros(len(kinds), dtype=bool)
            has_slot = slots >= 0
            slot_ok[has_slot] = self.slot_allocator[slots[has_slot]] == idx
            keep &= slot_ok | (kinds == STEP)
        k = kinds[keep]
        s = slots[keep].astype(np.int64)
        ops = np.where((k == ALLOC) | (k == RAW_ALLOC), s, ~s)
        ops = np.where(k == STEP, STEP_OP, ops)
        # drop repeated step markers with no allocation between them
        op_list = ops.tolist()
        return op_list, self.sizes.tolist()

    def live_curve(
        self, allocator_name: str | None = None, include_raw: bool = False
    ) -> np.ndarray:
        """Live requested bytes after each replayed op (same indexing as :meth:`replay_ops`)."""
        ops, _ = self.replay_ops(allocator_name, include_raw)
        arr = np.asarray(ops, dtype=np.int64)
        delta = np.zeros(len(arr), dtype=np.int64)
        is_alloc = arr >= 0
        is_free = (arr < 0) & (arr != STEP_OP)
        delta[is_alloc] = self.sizes[arr[is_alloc]]
        delta[is_free] = -self.sizes[~arr[is_free]]
        return np.cumsum(delta)

    def peak_live_bytes(self, allocator_name: str | None = None, include_raw: bool = False) -> int:
        curve = self.live_curve(allocator_name, include_raw)
        return int(curve.max()) if len(curve) else 0


def save_compact(trace: Trace, path: Path) -> None:
    """Write ``trace`` in the compact format (numpy arrays + JSON metadata, compressed)."""
    meta = {
        "format": "stowplan-memtrace",
        "version": FORMAT_VERSION,
        "source": trace.source,
        "allocator_names": list(trace.allocator_names),
        "kernel_names": list(trace.kernel_names),
        "phases": [list(p) for p in trace.phases],
        "stats": trace.stats.model_dump(mode="json"),
    }
    with open(path, "wb") as fh:
        np.savez_compressed(
            fh,
            kinds=trace.kinds,
            slots=trace.slots,
            sizes=trace.sizes,
            allocated=trace.allocated,
            slot_allocator=trace.slot_allocator,
            slot_step=trace.slot_step,
            slot_kernel=trace.slot_kernel,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )


def load_compact(path: Path) -> Trace:
    """Read a trace written by :func:`save_compact`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != "stowplan-memtrace" or meta.get("version") != FORMAT_VERSION:
                raise TraceFileError(str(path), "not a stowplan compact trace (version mismatch)")
            return Trace(
                source=str(meta["source"]),
                kinds=data["kinds"],
                slots=data["slots"],
                sizes=data["sizes"],
                allocated=data["allocated"],
                slot_allocator=data["slot_allocator"],
                slot_step=data["slot_step"],
                slot_kernel=data["slot_kernel"],
                allocator_names=tuple(meta["allocator_names"]),
                kernel_names=tuple(meta["kernel_names"]),
                phases=tuple((str(n), int(i)) for n, i in meta["phases"]),
                stats=ParseStats.model_validate(meta["stats"]),
            )
    except TraceFileError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise TraceFileError(str(path), f"cannot read compact trace: {exc}") from exc
