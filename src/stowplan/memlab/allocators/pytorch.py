"""PyTorch's CUDA caching allocator (native backend, default configuration, one stream).

From ``allocator-anchors.md`` section 1: requests rounded up to a multiple of 512 B; requests
<= 1 MiB use the small pool (2 MiB segments), larger ones the large pool (20 MiB segments for
1-10 MiB requests, own segment rounded up to 2 MiB for >= 10 MiB); best fit within the pool,
lowest address among equal sizes; small-pool blocks split when the remainder is >= 512 B,
large-pool blocks only when the remainder is > 1 MiB (max_split_size unset); freed blocks merge
with free neighbours of the same segment; segments are never cudaFree'd on a normal free
(no empty_cache, no OOM ladder on an unlimited device). Caller: the allocator registry.
"""

from __future__ import annotations

from stowplan.memlab.allocators.base import Allocator, CoalescingHeap
from stowplan.memlab.device import SimDevice

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


class PyTorchCachingAllocator(Allocator):
    name = "pytorch"

    def __init__(self, device: SimDevice) -> None:
        super().__init__(device)
        self.small = CoalescingHeap(device, lambda _r: SMALL_BUFFER, _split_small)
        self.large = CoalescingHeap(device, _large_segment, _split_large)
        self._small_blocks: set[int] = set()

    def malloc(self, size: int) -> int:
        rounded = -(-size // MIN_BLOCK) * MIN_BLOCK
        if rounded <= SMALL_SIZE:
            addr = self.small.malloc(rounded)
            self._small_blocks.add(addr)
            return addr
        return self.large.malloc(rounded)

    def free(self, addr: int) -> None:
        small = self._small_blocks
        if addr in small:
            small.discard(addr)
            self.small.free(addr)
        else:
            self.large.free(addr)


def _large_segment(rounded: int) -> int:
    if rounded < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-rounded // ROUND_LARGE) * ROUND_LARGE


def _split_small(block: int, request: int) -> bool:
    return block - request >= MIN_BLOCK


def _split_large(block: int, request: int) -> bool:
    return block - request > SMALL_SIZE
