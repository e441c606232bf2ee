"""TensorFlow's BFC allocator (best-fit with coalescing), ``allow_growth=true`` flavour.

Constants and rules from ``allocator-anchors.md`` section 2: sizes rounded up to 256 B; global
best fit (smallest chunk >= request, lowest address among equals; the 21 bins are a search
speed-up and do not change the choice); a chunk is split only if it is at least twice the
request or the leftover is >= 128 MiB, otherwise handed out whole; regions start at 2 MiB and
double (a request larger than the next region size doubles it until it fits; the next region
doubles after every extension); free chunks merge with free neighbours at once; regions are
never returned (garbage collection of free regions only runs near the memory limit, which this
unlimited device never reaches). Caller: the allocator registry.
"""

from __future__ import annotations

from stowplan.memlab.allocators.base import Allocator, CoalescingHeap, round_up
from stowplan.memlab.device import SimDevice

MIN_ALLOCATION = 256
MAX_INTERNAL_FRAGMENTATION = 128 << 20
INITIAL_REGION = 2 << 20


class BFCAllocator(Allocator):
    name = "bfc"

    def __init__(self, device: SimDevice) -> None:
        super().__init__(device)
        self._next_region = INITIAL_REGION
        self.heap = CoalescingHeap(device, self._region_size, _should_split)

    def _region_size(self, request: int) -> int:
        size = self._next_region
        while size < request:
            size *= 2
        self._next_region = size * 2
        return size

    def malloc(self, size: int) -> int:
        return self.heap.malloc(round_up(size, MIN_ALLOCATION))

    def free(self, addr: int) -> None:
        self.heap.free(addr)


def _should_split(chunk: int, request: int) -> bool:
    return chunk >= 2 * request or chunk - request >= MAX_INTERNAL_FRAGMENTATION
