"""Reference points next to the lower bound: what an offline planner and an idealised online
best-fit reach on a trace. Not allocators (they need the whole trace or an unbounded contiguous
address space); the report prints them to show where the achievable space lies.

* ``offline_floor``: greedy-by-size offsets for every allocation of the trace, knowing all
  lifetimes in advance (Pisarchyk & Lee 2020): the practical floor the anchors ask to report.
* ``online_high_water``: best fit with coalescing in ONE contiguous arena that grows for free;
  its high-water mark bounds what any online best-fit allocator reaches without lifetime
  knowledge, whatever its segment policy.

Callers: :mod:`stowplan.memlab.report`. Pure functions over replay op lists.
"""

from __future__ import annotations

from stowplan.memlab.alloc_trace import STEP_OP
from stowplan.memlab.allocators.base import CoalescingHeap
from stowplan.memlab.device import SimDevice
from stowplan.memlab.planner import plan_offsets

ALIGNMENT = 256
_ARENA = 1 << 46


def offline_floor(ops: list[int], sizes: list[int]) -> int:
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    t = 0
    for op in ops:
        if op == STEP_OP:
            continue
        if op >= 0:
            first[op] = t
        else:
            last[~op] = t
        t += 1
    slots = list(first)
    _, arena = plan_offsets(
        [sizes[s] for s in slots],
        [first[s] for s in slots],
        [last.get(s, t) for s in slots],
        ALIGNMENT,
    )
    return arena


def online_high_water(ops: list[int], sizes: list[int]) -> int:
    heap = CoalescingHeap(SimDevice(), lambda _r: _ARENA, lambda b, r: b - r >= ALIGNMENT)
    addrs = [0] * len(sizes)
    base = -1
    high = 0
    for op in ops:
        if op == STEP_OP:
            continue
        if op >= 0:
            r = -(-sizes[op] // ALIGNMENT) * ALIGNMENT
            a = heap.malloc(r)
            if base < 0:
                base = a
            addrs[op] = a
            high = max(high, a - base + r)
        else:
            heap.free(addrs[~op])
    return high
