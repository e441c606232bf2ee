"""A classic best-fit allocator with coalescing (dlmalloc-style), on device segments.

Policy: sizes rounded up to 16 B (dlmalloc's alignment, 2 x pointer size); global best fit with
the lowest address among equal sizes; a block is split whenever the remainder is at least 32 B
(dlmalloc's minimum chunk); freed blocks merge with both free neighbours; when nothing fits the
heap grows by a segment of the request rounded up to a 2 MiB granule (dlmalloc grows its top in
granularity units; on a GPU 2 MiB is the page size); free segments are not trimmed. It has no
per-size pools and no segment size classes, so it wastes the least space among the caching
baselines but makes more device calls. Caller: the allocator registry.
"""

from __future__ import annotations

from stowplan.memlab.allocators.base import Allocator, CoalescingHeap
from stowplan.memlab.device import SimDevice

ALIGNMENT = 16
MIN_CHUNK = 32
GRANULE = 2 << 20


class BestFitAllocator(Allocator):
    name = "bestfit"

    def __init__(self, device: SimDevice) -> None:
        super().__init__(device)
        self.heap = CoalescingHeap(device, _segment, _split)

    def malloc(self, size: int) -> int:
        return self.heap.malloc(-(-size // ALIGNMENT) * ALIGNMENT)

    def free(self, addr: int) -> None:
        self.heap.free(addr)


def _segment(request: int) -> int:
    return -(-request // GRANULE) * GRANULE


def _split(block: int, request: int) -> bool:
    return block - request >= MIN_CHUNK
