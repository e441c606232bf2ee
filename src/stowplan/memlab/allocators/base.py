"""The one interface every simulated allocator implements, and the shared best-fit heap.

An allocator is constructed on a :class:`~stowplan.memlab.device.SimDevice`; ``malloc(size)``
returns an address, ``free(addr)`` takes it back, ``step()`` is an optional hint that a new
execution step (one inference) begins. Requests are in bytes, already > 0. Allocators call the
device only to reserve/release memory; the simulator charges the cost model's per-request
bookkeeping cost to every allocator whose ``caching`` flag is set.

:class:`CoalescingHeap` is the engine behind the best-fit family (BFC, PyTorch's caching
allocator, classic best-fit): free blocks in a list sorted by (size, address) searched with
``bisect`` (global best fit, lowest address among equal sizes, as both BFC and PyTorch do) and
coalesced with their physical neighbours on free (:mod:`stowplan.memlab.freelist`, shared with
the agent's residency pool). Policies (rounding, split rule, segment size)
are parameters. Callers: the allocator modules and the simulator. No trace knowledge here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from stowplan.memlab.device import SimDevice
from stowplan.memlab.errors import InvalidFreeError
from stowplan.memlab.freelist import FreeList


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
    ``should_split(block, request)`` decides whether to cut a block or hand it out whole. The
    free ranges are a :class:`~stowplan.memlab.freelist.FreeList` (``free``), the same one the
    agent's residency pool carves.
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
        self.free_list = FreeList()
        self.used: dict[int, int] = {}  # allocated block start -> block size
        self.segments: dict[int, int] = {}  # segment base -> size
        self.adopted: set[int] = set()
        self.allocated_bytes = 0

    def grow(self, request: int) -> None:
        seg = self.segment_size(request)
        base = self.device.malloc(seg)
        self.segments[base] = seg
        self.free_list.insert(base, seg)

    def malloc(self, request: int) -> int:
        """Best fit for ``request`` (already rounded by the caller), growing when nothing fits."""
        got = self.free_list.take(request, self.should_split)
        if got is None:
            self.grow(request)
            got = self.free_list.take(request, self.should_split)
            assert got is not None  # the new segment holds the request
        addr, size = got
        self.used[addr] = size
        self.allocated_bytes += size
        return addr

    def free(self, addr: int) -> None:
        size = self.used.pop(addr, None)
        if size is None:
            raise InvalidFreeError(f"free of unknown address {addr:#x}")
        self.allocated_bytes -= size
        self.free_list.give(addr, size)

    def largest_free(self) -> int:
        return self.free_list.largest()

    def adopt(self, base: int, size: int) -> None:
        """Add a range the caller reserved itself (never released by this heap)."""
        self.adopted.add(base)
        self.segments[base] = size
        self.free_list.insert(base, size)

    def release_free_segments(self) -> int:
        """cudaFree every segment that is entirely free; returns the bytes released."""
        released = 0
        free = self.free_list
        for base, seg in list(self.segments.items()):
            if base not in self.adopted and free.at.get(base) == seg:
                free.remove(base, seg)
                del self.segments[base]
                self.device.free(base)
                released += seg
        return released


class ExpandableHeap(CoalescingHeap):
    """Best fit in ONE virtually contiguous range, backed by physical memory on demand.

    The range (``address_space_bytes``) is reserved once with no memory behind it; whenever a
    block ends beyond the mapped part, more is mapped (``device.map``, one device allocation):
    up to the block's end plus ``ahead(block end, request)`` bytes, rounded to the device page.
    Free blocks on both sides of a former mapping boundary merge, so the heap never has the
    segment-end holes of a cudaMalloc'ed heap; mapped memory is never unmapped.
    """

    def __init__(
        self,
        device: SimDevice,
        should_split: Callable[[int, int], bool],
        ahead: Callable[[int, int], int],
        address_space_bytes: int = 1 << 40,
    ) -> None:
        super().__init__(device, _no_growth, should_split)
        self.ahead = ahead
        self.base = device.reserve_address_space(address_space_bytes)
        self.limit = self.base + address_space_bytes
        self.mapped_end = self.base
        self.page = device.cost.page_bytes
        self.adopt(self.base, address_space_bytes)

    def malloc(self, request: int) -> int:
        addr = super().malloc(request)
        end = addr + self.used[addr]
        if end > self.mapped_end:
            want = end + self.ahead(end - self.base, request)
            want = self.base + -(-(want - self.base) // self.page) * self.page
            self.device.map(want - self.mapped_end)
            self.mapped_end = want
        return addr

    def largest_free(self) -> int:
        """Largest free block inside the mapped part (taking it never maps more)."""
        best = 0
        for size, addr in reversed(self.free_list.keys):
            inside = min(addr + size, self.mapped_end) - addr
            if inside >= size:
                return max(best, size)
            best = max(best, inside)  # only the block at the mapped end is cut
        return best

    def mapped_bytes(self) -> int:
        return self.mapped_end - self.base


def _no_growth(request: int) -> int:
    raise AssertionError("an expandable heap never needs a new segment")


def round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple
