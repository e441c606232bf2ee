"""The naive allocator: one ``cudaMalloc`` per request, one ``cudaFree`` per free.

It reserves exactly the live requested bytes (the space lower bound) and pays a device call,
including cudaFree's device synchronisation, for every request: the worst time. Caller: the
allocator registry. No caching, no rounding.
"""

from __future__ import annotations

from stowplan.memlab.allocators.base import Allocator


class NaiveAllocator(Allocator):
    name = "naive"
    caching = False

    def malloc(self, size: int) -> int:
        return self.device.malloc(size)

    def free(self, addr: int) -> None:
        self.device.free(addr)
