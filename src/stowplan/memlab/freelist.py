"""The one free list: free ranges of an address space, best fit, coalesced on return.

Free blocks are kept as (size, offset) keys in a sorted list searched with ``bisect`` (global
best fit: the smallest block that holds the request, lowest offset among equal sizes, as both
TensorFlow's BFC and PyTorch's caching allocator choose; first fit by offset on request), plus
start -> size and end -> start maps so that a returned range merges with its free neighbours in
O(log n).

Callers: :class:`stowplan.memlab.allocators.base.CoalescingHeap` (every best-fit allocator of
the lab) and :class:`stowplan.memlab.pool.ResidencyPool` (the agent's device-memory pool).
It must stay importable by the agent: standard library only, no device, no trace, no I/O.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable


class FreeList:
    """Free ranges ``[offset, offset + size)``; see the module docstring."""

    __slots__ = ("at", "end", "keys")

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []  # free blocks (size, offset), sorted
        self.at: dict[int, int] = {}  # free block start -> size
        self.end: dict[int, int] = {}  # free block end -> start

    @classmethod
    def span(cls, offset: int, size: int) -> FreeList:
        """A free list holding the one range ``[offset, offset + size)`` (empty if size <= 0)."""
        free = cls()
        if size > 0:
            free.insert(offset, size)
        return free

    def copy(self) -> FreeList:
        other = FreeList()
        other.keys = list(self.keys)
        other.at = dict(self.at)
        other.end = dict(self.end)
        return other

    def insert(self, offset: int, size: int) -> None:
        """Add a free range as it is (no merging; the caller knows it has no free neighbour)."""
        insort(self.keys, (size, offset))
        self.at[offset] = size
        self.end[offset + size] = offset

    def remove(self, offset: int, size: int) -> None:
        """Drop the free block that starts at ``offset`` and has ``size`` bytes."""
        del self.keys[bisect_left(self.keys, (size, offset))]
        del self.at[offset]
        del self.end[offset + size]

    def take(
        self, size: int, should_split: Callable[[int, int], bool] | None = None
    ) -> tuple[int, int] | None:
        """Best fit for ``size`` bytes: (offset, bytes handed out), or None if no block holds it.

        The block is cut at ``size`` and its tail stays free unless ``should_split(block, size)``
        says to hand the whole block out (allocators with a split rule); without a rule it is
        always cut.
        """
        keys = self.keys
        i = bisect_left(keys, (size, -1))
        if i == len(keys):
            return None
        block, offset = keys[i]
        del keys[i]
        del self.at[offset]
        end = offset + block
        del self.end[end]
        if block > size and (should_split is None or should_split(block, size)):
            rest = offset + size
            insort(keys, (block - size, rest))
            self.at[rest] = block - size
            self.end[end] = rest
            block = size
        return offset, block

    def take_lowest(self, size: int) -> tuple[int, int] | None:
        """First fit: the free block at the lowest offset that holds ``size`` bytes, cut at
        ``size`` (O(n) in the free blocks; for pools with few blocks, such as model residency)."""
        fits = [off for off, block in self.at.items() if block >= size]
        if not fits:
            return None
        offset = min(fits)
        block = self.at[offset]
        self.remove(offset, block)
        if block > size:
            self.insert(offset + size, block - size)  # its neighbours are taken: no merge
        return offset, size

    def give(self, offset: int, size: int) -> None:
        """Return a range; it merges with the free blocks right before and after it."""
        end = offset + size
        nxt = self.at.pop(end, None)
        if nxt is not None:
            del self.keys[bisect_left(self.keys, (nxt, end))]
            end += nxt
            del self.end[end]
        prev = self.end.pop(offset, None)
        if prev is not None:
            del self.keys[bisect_left(self.keys, (offset - prev, prev))]
            del self.at[prev]
            offset = prev
        insort(self.keys, (end - offset, offset))
        self.at[offset] = end - offset
        self.end[end] = offset

    def largest(self) -> int:
        """Size of the largest free block (0 if none)."""
        return self.keys[-1][0] if self.keys else 0

    def total(self) -> int:
        """Free bytes in all blocks."""
        return sum(self.at.values())

    def __len__(self) -> int:
        return len(self.keys)


__all__ = ["FreeList"]
