"""The one interface every simulated allocator implements, and the shared best-fit heap.

An allocator is constructed on a :class:`~stowplan.memlab.device.SimDevice`; ``malloc(size)``
returns an address, ``free(addr)`` takes it back, ``step()`` is an optional hint that a new
execution step (one inference) begins. Requests are in bytes, already > 0. Allocators call the
device only to reserve/release memory; the simulator charges the cost model's per-request
bookkeeping cost to every allocator whose ``caching`` flag is set.

:class:`CoalescingHeap` is the engine behind the best-fit family (BFC, PyTorch's caching
allocator, classic best-fit): free blocks in a list sorted by (size, address) searched with
``bisect`` (global best fit, lowest address among equal sizes, as both BFC and PyTorch do) and
coalesced with their physical neighbours on free. Policies (rounding, split rule, segment size)
are parameters. Callers: the allocator modules and the simulator. No trace knowledge here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_left, insort
from collections.abc import Callable
from typing import ClassVar

from stowplan.memlab.device import SimDevice
from stowplan.memlab.errors import InvalidFreeError


class Allocator(ABC):
    """Base class of the simulated allocators."""

    name: ClassVar[str] = ""
    caching: ClassVar[bool] = True  # False: every request is itself a device call (naive)

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    @abstractmethod
    def malloc(self, size: int) -> int:
        """Return the address of a block of at least ``size`` bytes."""

    @abstractmethod
    def free(self, addr: int) -> None:
        """Take back the block at ``addr`` (returned earlier by :meth:`malloc`)."""

    def step(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Hint: a new execution step begins (allocators may ignore it)."""


class CoalescingHeap:
    """Best-fit free list with splitting and coalescing over device segments.

    ``segment_size(rounded_request)`` picks how much to cudaMalloc when nothing fits;
    ``should_split(block, request)`` decides whether to cut a block or hand it out whole.
    """

    def __init__(
        self,
        device: SimDevice,
        segment_size: Callable[[int], int],
        should_split: Callable[[int, int], bool],
    ) -> None:
        self.device = device
        self.segment_size = segment_size
        self.should_split = should_split
        self.keys: list[tuple[int, int]] = []  # free blocks (size, addr), sorted
        self.free_at: dict[int, int] = {}  # free block start -> size
        self.free_end: dict[int, int] = {}  # free block end -> start
        self.used: dict[int, int] = {}  # allocated block start -> block size
        self.segments: dict[int, int] = {}  # segment base -> size
        self.adopted: set[int] = set()
        self.allocated_bytes = 0

    def _insert_free(self, addr: int, size: int) -> None:
        insort(self.keys, (size, addr))
        self.free_at[addr] = size
        self.free_end[addr + size] = addr

    def _remove_free(self, addr: int, size: int) -> None:
        keys = self.keys
        del keys[bisect_left(keys, (size, addr))]
        del self.free_at[addr]
        del self.free_end[addr + size]

    def grow(self, request: int) -> None:
        seg = self.segment_size(request)
        base = self.device.malloc(seg)
        self.segments[base] = seg
        self._insert_free(base, seg)

    def malloc(self, request: int) -> int:
        """Best fit for ``request`` (already rounded by the caller). Hot path: inlined."""
        keys = self.keys
        i = bisect_left(keys, (request, 0))
        if i == len(keys):
            self.grow(request)
            i = bisect_left(keys, (request, 0))
        size, addr = keys[i]
        del keys[i]
        del self.free_at[addr]
        end = addr + size
        del self.free_end[end]
        if size > request and self.should_split(size, request):
            rest = addr + request
            insort(keys, (size - request, rest))
            self.free_at[rest] = size - request
            self.free_end[end] = rest
            size = request
        self.used[addr] = size
        self.allocated_bytes += size
        return addr

    def free(self, addr: int) -> None:
        size = self.used.pop(addr, None)
        if size is None:
            raise InvalidFreeError(f"free of unknown address {addr:#x}")
        self.allocated_bytes -= size
        keys = self.keys
        free_at = self.free_at
        free_end = self.free_end
        end = addr + size
        nxt = free_at.pop(end, None)
        if nxt is not None:
            del keys[bisect_left(keys, (nxt, end))]
            end += nxt
            del free_end[end]
        prev = free_end.pop(addr, None)
        if prev is not None:
            del keys[bisect_left(keys, (addr - prev, prev))]
            del free_at[prev]
            addr = prev
        insort(keys, (end - addr, addr))
        free_at[addr] = end - addr
        free_end[end] = addr

    def adopt(self, base: int, size: int) -> None:
        """Add a range the caller reserved itself (never released by this heap)."""
        self.adopted.add(base)
        self.segments[base] = size
        self._insert_free(base, size)

    def release_free_segments(self) -> int:
        """cudaFree every segment that is entirely free; returns the bytes released."""
        released = 0
        for base, seg in list(self.segments.items()):
            if base not in self.adopted and self.free_at.get(base) == seg:
                self._remove_free(base, seg)
                del self.segments[base]
                self.device.free(base)
                released += seg
        return released


def round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple
