"""Parser for TensorFlow ``__LOG_MEMORY__`` logs (plain or gzipped) into a :class:`Trace`.

Reads the record types written by ``tensorflow/core/framework/log_memory.cc``:
``MemoryLogTensorAllocation`` (with or without a buffer), ``MemoryLogTensorDeallocation``,
``MemoryLogTensorOutput``, ``MemoryLogRawAllocation``, ``MemoryLogRawDeallocation`` and
``MemoryLogStep``, keyed by (allocator name, allocation id). Lines that are not memory records are
skipped; ``#### tftrace phase X begin`` markers are kept as phase boundaries. A malformed memory
record is counted and reported with its line number (``ParseStats.malformed_*``), never fatal.

Counting rules follow ``../shared/data/tf-memlogs/README.md`` exactly. Callers: the ``memsim``
command, the report, tests. Must not simulate anything.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from stowplan.memlab.alloc_trace import (
    ALLOC,
    COMPACT_SUFFIX,
    FREE,
    RAW_ALLOC,
    RAW_FREE,
    STEP,
    ParseStats,
    Trace,
    load_compact,
)
from stowplan.memlab.errors import TraceFileError

MARKER = "__LOG_MEMORY__ "
PHASE_PREFIX = "#### tftrace phase "
MAX_MALFORMED_EXAMPLES = 50

_STR = r'"((?:[^"\\]|\\.)*)"'
_RE_STEP_ID = re.compile(r"\bstep_id: (-?\d+)")
_RE_KERNEL = re.compile(r"\bkernel_name: " + _STR)
_RE_REQ = re.compile(r"\brequested_bytes: (\d+)")
_RE_ALLOCATED = re.compile(r"\ballocated_bytes: (\d+)")
_RE_ALLOCATOR = re.compile(r"\ballocator_name: " + _STR)
_RE_ID = re.compile(r"\ballocation_id: (\d+)")
_RE_NUM_BYTES = re.compile(r"\bnum_bytes: (\d+)")
_RE_OPERATION = re.compile(r"\boperation: " + _STR)

# TF's special step ids (log_memory.h): -1 unknown, -2 constant op, -3 external state,
# -4 op kernel construction, -5 function, -6 unknown (from proto). Real steps have other ids
# (small positive ones under Session.run, random 64-bit ones under tf.function).
_SPECIAL_STEP_MIN = -16


class _Builder:
    """Accumulates events while lines are read; turns them into a Trace at the end."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.kinds: list[int] = []
        self.slots: list[int] = []
        self.sizes: list[int] = []
        self.allocated: list[int] = []
        self.slot_allocator: list[int] = []
        self.slot_step: list[int] = []
        self.slot_kernel: list[int] = []
        self.slot_kind: list[int] = []
        self.allocator_idx: dict[str, int] = {}
        self.kernel_idx: dict[str, int] = {}
        self.live: dict[tuple[int, int], int] = {}  # (allocator idx, id) -> slot
        self.live_bytes: list[int] = []  # per allocator idx, tensor allocations only
        self.peak_bytes: list[int] = []
        self.seen_steps: set[int] = set()
        self.phases: list[tuple[str, int]] = []
        self.alloc_records = 0
        self.alloc_without_buffer = 0
        self.dealloc_records = 0
        self.dealloc_matched = 0
        self.output_records = 0
        self.other: dict[str, int] = {}
        self.total_requested = 0
        self.distinct_sizes: set[int] = set()
        self.kernel_names_seen: set[str] = set()
        self.malformed = 0
        self.malformed_examples: list[tuple[int, str]] = []

    def bad(self, line_no: int, reason: str) -> None:
        self.malformed += 1
        if len(self.malformed_examples) < MAX_MALFORMED_EXAMPLES:
            self.malformed_examples.append((line_no, reason))

    def allocator(self, name: str) -> int:
        idx = self.allocator_idx.get(name)
        if idx is None:
            idx = len(self.allocator_idx)
            self.allocator_idx[name] = idx
            self.live_bytes.append(0)
            self.peak_bytes.append(0)
        return idx

    def kernel(self, name: str) -> int:
        idx = self.kernel_idx.get(name)
        if idx is None:
            idx = len(self.kernel_idx)
            self.kernel_idx[name] = idx
        return idx

    def new_slot(
        self,
        kind: int,
        size: int,
        allocated: int,
        alloc: int,
        step: int,
        kernel: int,
        alloc_id: int,
        line_no: int,
    ) -> None:
        key = (alloc, alloc_id)
        if key in self.live:
            self.bad(line_no, f"allocation id {alloc_id} allocated twice while live")
            return
        slot = len(self.sizes)
        self.sizes.append(size)
        self.allocated.append(allocated)
        self.slot_allocator.append(alloc)
        self.slot_step.append(step)
        self.slot_kernel.append(kernel)
        self.slot_kind.append(kind)
        self.live[key] = slot
        if kind == ALLOC and not (_SPECIAL_STEP_MIN <= step <= 0) and step not in self.seen_steps:
            self.seen_steps.add(step)
            self.kinds.append(STEP)
            self.slots.append(-1)
        self.kinds.append(kind)
        self.slots.append(slot)

    def free_slot(self, kind: int, alloc: int, alloc_id: int) -> bool:
        slot = self.live.pop((alloc, alloc_id), None)
        if slot is None:
            return False
        self.kinds.append(kind)
        self.slots.append(slot)
        return True

    def build(self, lines: int) -> Trace:
        stats = ParseStats(
            lines=lines,
            alloc_records=self.alloc_records,
            alloc_records_without_buffer=self.alloc_without_buffer,
            dealloc_records=self.dealloc_records,
            dealloc_matched=self.dealloc_matched,
            dealloc_unmatched=self.dealloc_records - self.dealloc_matched,
            output_records=self.output_records,
            other_records=dict(self.other),
            total_requested_bytes=self.total_requested,
            peak_live_bytes_by_allocator={
                name: self.peak_bytes[i] for name, i in self.allocator_idx.items()
            },
            distinct_sizes=len(self.distinct_sizes),
            distinct_kernel_names=len(self.kernel_names_seen),
            malformed_records=self.malformed,
            malformed_examples=self.malformed_examples,
        )
        return Trace(
            source=self.source,
            kinds=np.asarray(self.kinds, dtype=np.uint8),
            slots=np.asarray(self.slots, dtype=np.int32),
            sizes=np.asarray(self.sizes, dtype=np.int64),
            allocated=np.asarray(self.allocated, dtype=np.int64),
            slot_allocator=np.asarray(self.slot_allocator, dtype=np.int16),
            slot_step=np.asarray(self.slot_step, dtype=np.int64),
            slot_kernel=np.asarray(self.slot_kernel, dtype=np.int32),
            allocator_names=tuple(self.allocator_idx),
            kernel_names=tuple(self.kernel_idx),
            phases=tuple(self.phases),
            stats=stats,
        )


def _int(regex: re.Pattern[str], text: str) -> int | None:
    m = regex.search(text)
    return int(m.group(1)) if m else None


def _str(regex: re.Pattern[str], text: str) -> str | None:
    m = regex.search(text)
    return m.group(1) if m else None


def _record(b: _Builder, line_no: int, rtype: str, body: str) -> None:
    """Handle one memory record; ``body`` is the text between the outer braces."""
    if rtype == "MemoryLogTensorAllocation":
        kernel = _str(_RE_KERNEL, body) or ""
        desc_at = body.find("allocation_description {")
        if desc_at < 0:
            if "tensor {" not in body:
                b.bad(line_no, "TensorAllocation without a tensor")
                return
            b.alloc_without_buffer += 1
            return
        desc = body[desc_at:]
        req = _int(_RE_REQ, desc)
        alloc_id = _int(_RE_ID, desc)
        name = _str(_RE_ALLOCATOR, desc)
        if req is None or alloc_id is None or name is None:
            b.bad(line_no, "TensorAllocation missing requested_bytes/allocation_id/allocator")
            return
        allocated = _int(_RE_ALLOCATED, desc)
        step = _int(_RE_STEP_ID, body[:desc_at]) or 0
        a = b.allocator(name)
        before = b.malformed
        b.new_slot(
            ALLOC,
            req,
            req if allocated is None else allocated,
            a,
            step,
            b.kernel(kernel),
            alloc_id,
            line_no,
        )
        if b.malformed != before:
            return
        b.alloc_records += 1
        b.kernel_names_seen.add(kernel)
        b.total_requested += req
        b.distinct_sizes.add(req)
        live = b.live_bytes[a] + req
        b.live_bytes[a] = live
        if live > b.peak_bytes[a]:
            b.peak_bytes[a] = live
    elif rtype == "MemoryLogTensorDeallocation":
        alloc_id = _int(_RE_ID, body)
        name = _str(_RE_ALLOCATOR, body)
        if alloc_id is None or name is None:
            b.bad(line_no, "TensorDeallocation missing allocation_id/allocator_name")
            return
        b.dealloc_records += 1
        a = b.allocator(name)
        slot = b.live.get((a, alloc_id))
        if slot is not None and b.slot_kind[slot] != ALLOC:
            # the id belongs to a live raw allocation: not a tensor free
            slot = None
        if slot is not None and b.free_slot(FREE, a, alloc_id):
            b.dealloc_matched += 1
            b.live_bytes[a] -= b.sizes[slot]
    elif rtype == "MemoryLogTensorOutput":
        b.output_records += 1
    elif rtype == "MemoryLogRawAllocation":
        num = _int(_RE_NUM_BYTES, body)
        alloc_id = _int(_RE_ID, body)
        name = _str(_RE_ALLOCATOR, body)
        if num is None or alloc_id is None or name is None:
            b.bad(line_no, "RawAllocation missing num_bytes/allocation_id/allocator_name")
            return
        b.other["RawAllocation"] = b.other.get("RawAllocation", 0) + 1
        step = _int(_RE_STEP_ID, body) or 0
        b.new_slot(
            RAW_ALLOC,
            num,
            num,
            b.allocator(name),
            step,
            b.kernel(_str(_RE_OPERATION, body) or ""),
            alloc_id,
            line_no,
        )
    elif rtype == "MemoryLogRawDeallocation":
        alloc_id = _int(_RE_ID, body)
        name = _str(_RE_ALLOCATOR, body)
        if alloc_id is None or name is None:
            b.bad(line_no, "RawDeallocation missing allocation_id/allocator_name")
            return
        b.other["RawDeallocation"] = b.other.get("RawDeallocation", 0) + 1
        b.free_slot(RAW_FREE, b.allocator(name), alloc_id)
    elif rtype == "MemoryLogStep":
        b.other["Step"] = b.other.get("Step", 0) + 1
    else:
        b.other[rtype] = b.other.get(rtype, 0) + 1


def parse_lines(lines: Iterable[str], source: str = "<lines>") -> Trace:
    """Parse log lines (an iterable of str) into a :class:`Trace`."""
    b = _Builder(source)
    line_no = 0
    for line_no, line in enumerate(lines, start=1):
        at = line.find(MARKER)
        if at < 0:
            if line.startswith(PHASE_PREFIX):
                rest = line[len(PHASE_PREFIX) :].strip()
                if " begin" in rest:
                    b.phases.append((rest.split(" begin", 1)[0], len(b.kinds)))
            continue
        rest = line[at + len(MARKER) :].rstrip()
        brace = rest.find(" {")
        if brace <= 0 or not rest.endswith("}"):
            b.bad(line_no, "truncated or unparsable memory record")
            continue
        rtype = rest[:brace]
        if not rtype.startswith("MemoryLog") or " " in rtype:
            b.bad(line_no, f"unknown record header {rtype[:40]!r}")
            continue
        _record(b, line_no, rtype, rest[brace + 2 : -1])
    return b.build(line_no)


def _open_lines(path: Path) -> Iterator[str]:
    with path.open("rb") as raw:
        magic = raw.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        yield from fh


def parse_log(path: str | Path) -> Trace:
    """Parse a TF log file (gzip detected by magic bytes)."""
    p = Path(path)
    if not p.is_file():
        raise TraceFileError(str(p), "no such file")
    try:
        return parse_lines(_open_lines(p), source=str(p))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TraceFileError(str(p), f"cannot read log: {exc}") from exc


def load_trace(path: str | Path) -> Trace:
    """Load a trace from a ``.log``/``.log.gz`` TF log or a compact ``.stwtrace.npz`` file."""
    p = Path(path)
    if p.name.endswith(COMPACT_SUFFIX):
        if not p.is_file():
            raise TraceFileError(str(p), "no such file")
        return load_compact(p)
    return parse_log(p)
