"""stowplan's trace-aware allocator: learn one execution step, then replay a planned layout.

An inference server runs the same step again and again. This allocator:

1. serves requests online from a best-fit heap with coalescing (256 B granularity, split
   whenever the rest is >= 256 B, segments grown by exactly what is missing but at least 1/8 of
   what is reserved, so few device calls), and records every request of >= ``PLAN_MIN_BYTES``
   of the current step with its lifetime (event ordinals);
2. at the next step hint, plans offsets for the recorded tensors that lived and died inside the
   step (greedy by size, :mod:`stowplan.memlab.planner`), into one arena carved from the heap
   (a free hole if one is large enough; otherwise fully free segments are released first and the
   arena is one exact-size cudaMalloc); an arena that is large enough is kept across replans;
3. in later steps serves the k-th request of size s at the planned offset of the k-th tensor of
   size s, after checking that the range is free (a sorted list of live arena blocks), so it
   stays correct when a step differs: any request without a free planned slot, and anything
   that outlives a step, goes to the online heap. A step whose size multiset differs from the
   planned one triggers a replan.

Steady-state steps then cost no device call and reuse the same addresses every step (locality).
The first step is online, so the reserved peak of a trace whose peak falls in its first step is
that of the online heap. Caller: the allocator registry.
"""

from __future__ import annotations

from bisect import bisect_left

from stowplan.memlab.allocators.base import Allocator, CoalescingHeap
from stowplan.memlab.device import SimDevice
from stowplan.memlab.planner import plan_offsets

ALIGNMENT = 256
PLAN_MIN_BYTES = 4096
MAX_PLANNED_TENSORS = 20000
GROWTH_FRACTION = 8  # grow segments by at least reserved / GROWTH_FRACTION


class StowplanAllocator(Allocator):
    name = "stowplan"

    def __init__(self, device: SimDevice) -> None:
        super().__init__(device)
        self.heap = CoalescingHeap(device, self._segment, _split)
        self.t = 0
        # recording of the current step
        self.rec_size: list[int] = []
        self.rec_first: list[int] = []
        self.rec_last: list[int] = []
        self.rec_at: dict[int, int] = {}
        # the plan in force
        self.plan: dict[tuple[int, int], int] = {}
        self.plan_signature: list[int] | None = None
        self.arena_base = -1
        self.arena_size = 0
        self.occ: dict[int, int] = {}
        self.live_starts: list[int] = []
        self.live_end: dict[int, int] = {}
        self.planned_hits = 0
        self.planned_misses = 0
        self.plans_made = 0

    def _segment(self, request: int) -> int:
        floor = self.device.reserved_bytes // GROWTH_FRACTION
        return max(request, -(-floor // ALIGNMENT) * ALIGNMENT, 64 * 1024)

    def malloc(self, size: int) -> int:
        t = self.t
        self.t = t + 1
        r = -(-size // ALIGNMENT) * ALIGNMENT
        if r < PLAN_MIN_BYTES:
            return self.heap.malloc(r)
        addr = -1
        if self.plan:
            occ = self.occ
            n = occ.get(r, 0)
            occ[r] = n + 1
            off = self.plan.get((r, n))
            if off is not None:
                a = self.arena_base + off
                end = a + r
                starts = self.live_starts
                j = bisect_left(starts, a)
                if (j == len(starts) or starts[j] >= end) and (
                    j == 0 or self.live_end[starts[j - 1]] <= a
                ):
                    starts.insert(j, a)
                    self.live_end[a] = end
                    self.planned_hits += 1
                    addr = a
            if addr < 0:
                self.planned_misses += 1
        if addr < 0:
            addr = self.heap.malloc(r)
        self.rec_at[addr] = len(self.rec_size)
        self.rec_size.append(r)
        self.rec_first.append(t)
        self.rec_last.append(-1)
        return addr

    def free(self, addr: int) -> None:
        t = self.t
        self.t = t + 1
        i = self.rec_at.pop(addr, None)
        if i is not None:
            self.rec_last[i] = t
        if addr in self.live_end:
            del self.live_end[addr]
            starts = self.live_starts
            del starts[bisect_left(starts, addr)]
        else:
            self.heap.free(addr)

    def step(self) -> None:
        sizes, firsts, lasts = [], [], []
        for s, a, b in zip(self.rec_size, self.rec_first, self.rec_last, strict=True):
            if b >= 0:
                sizes.append(s)
                firsts.append(a)
                lasts.append(b)
        self.rec_size, self.rec_first, self.rec_last = [], [], []
        self.rec_at = {}
        self.occ = {}
        if not sizes or len(sizes) > MAX_PLANNED_TENSORS:
            return
        signature = sorted(sizes)
        if signature == self.plan_signature:
            return
        self._replan(sizes, firsts, lasts, signature)

    def _replan(
        self, sizes: list[int], firsts: list[int], lasts: list[int], signature: list[int]
    ) -> None:
        offsets, arena = plan_offsets(sizes, firsts, lasts, ALIGNMENT)
        if arena > self.arena_size:
            if self.live_starts:
                return  # the old arena still holds live blocks; keep its plan
            if self.arena_base >= 0:
                self.heap.free(self.arena_base)
                self.arena_base = -1
                self.arena_size = 0
            keys = self.heap.keys
            if not keys or keys[-1][0] < arena:
                self.heap.release_free_segments()
            self.arena_base = self.heap.malloc(arena)
            self.arena_size = arena
        seen: dict[int, int] = {}
        plan: dict[tuple[int, int], int] = {}
        order = sorted(range(len(sizes)), key=lambda i: firsts[i])
        for i in order:
            s = sizes[i]
            n = seen.get(s, 0)
            seen[s] = n + 1
            plan[(s, n)] = offsets[i]
        self.plan = plan
        self.plan_signature = signature
        self.plans_made += 1


def _split(block: int, request: int) -> bool:
    return block - request >= ALIGNMENT
