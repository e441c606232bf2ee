"""A binary buddy allocator (Knowlton 1965; Knuth TAOCP 1, 2.5) on device segments.

Block sizes are powers of two from 256 B; a request takes the smallest free block of its order,
splitting a larger one into halves as needed; a freed block merges with its buddy
(``offset XOR size`` inside its segment) while the buddy is free. Each segment is one buddy heap
of ``max(8 MiB, next power of two of the request)`` bytes, cudaMalloc'ed when no block of a
sufficient order is free; segments are never returned. Caller: the allocator registry.
"""

from __future__ import annotations

from stowplan.memlab.allocators.base import Allocator
from stowplan.memlab.device import SimDevice
from stowplan.memlab.errors import InvalidFreeError

MIN_ORDER = 8  # 256 B
MIN_SEGMENT_ORDER = 23  # 8 MiB
MAX_ORDER = 48


class BuddyAllocator(Allocator):
    name = "buddy"

    def __init__(self, device: SimDevice) -> None:
        super().__init__(device)
        # free[order]: block address -> its segment base
        self.free_lists: list[dict[int, int]] = [{} for _ in range(MAX_ORDER + 1)]
        self.used: dict[int, tuple[int, int]] = {}  # addr -> (order, segment base)

    def malloc(self, size: int) -> int:
        order = max(MIN_ORDER, (size - 1).bit_length())
        lists = self.free_lists
        k = order
        while k <= MAX_ORDER and not lists[k]:
            k += 1
        if k > MAX_ORDER:
            k = max(order, MIN_SEGMENT_ORDER)
            base = self.device.malloc(1 << k)
            lists[k][base] = base
        addr, base = lists[k].popitem()
        while k > order:  # split, keep the lower half
            k -= 1
            lists[k][addr + (1 << k)] = base
        self.used[addr] = (order, base)
        return addr

    def free(self, addr: int) -> None:
        entry = self.used.pop(addr, None)
        if entry is None:
            raise InvalidFreeError(f"free of unknown address {addr:#x}")
        order, base = entry
        lists = self.free_lists
        while order < MAX_ORDER:
            buddy = base + ((addr - base) ^ (1 << order))
            fl = lists[order]
            if fl.get(buddy) != base:
                break
            del fl[buddy]
            addr = min(addr, buddy)
            order += 1
        lists[order][addr] = base
