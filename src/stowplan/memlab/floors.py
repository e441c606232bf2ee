"""Reference points next to the lower bound: what an offline planner and an idealised online
best-fit reach on a trace. Not allocators (they need the whole trace or an unbounded contiguous
address space); the report prints them to show where the achievable space lies.

* ``offline_floor``: greedy-by-size offsets for every allocation of the trace, knowing all
  lifetimes in advance (Pisarchyk & Lee 2020): the practical floor the anchors ask to report.
* ``online_high_water``: best fit with coalescing in ONE contiguous arena that grows for free;
  its high-water mark bounds what any online best-fit allocator reaches without lifetime
  knowledge, whatever its segment policy.
* ``growth_bound``: for that same one-range placement, how few device allocations (mappings)
  any *online* growth policy can make if it is never to hold more than the best caching
  baseline holds at the same moment, or only at every step boundary (a run may stop there:
  an online policy cannot tell the full trace from its prefix). Greedy (map as far as the cap
  allows whenever the high water passes the mapped end) is optimal for both, so these are
  lower bounds on the calls, set against PyTorch's calls on the same trace.

Callers: :mod:`stowplan.memlab.report`. Pure functions over replay op lists.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from stowplan.memlab.alloc_trace import STEP_OP
from stowplan.memlab.allocators.base import CoalescingHeap
from stowplan.memlab.device import SimDevice
from stowplan.memlab.planner import plan_offsets

ALIGNMENT = 256
_ARENA = 1 << 46
PAGE_BYTES = 2 << 20  # the simulated device's mapping granularity (CostModel.page_bytes)


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
    return high_water_records(ops, sizes)[-1][1] if ops else 0


def high_water_records(ops: list[int], sizes: list[int]) -> list[tuple[int, int]]:
    """(op index, bytes) each time the one-range best-fit placement's high water rises."""
    heap = CoalescingHeap(SimDevice(), lambda _r: _ARENA, lambda b, r: b - r >= ALIGNMENT)
    addrs = [0] * len(sizes)
    base = -1
    out = [(0, 0)]
    for i, op in enumerate(ops):
        if op == STEP_OP:
            continue
        if op >= 0:
            r = -(-sizes[op] // ALIGNMENT) * ALIGNMENT
            a = heap.malloc(r)
            if base < 0:
                base = a
            addrs[op] = a
            if a - base + r > out[-1][1]:
                out.append((i, a - base + r))
        else:
            heap.free(addrs[~op])
    return out


@dataclass(frozen=True)
class GrowthBound:
    """What any online growth policy of the one-range placement can reach on one trace."""

    high_water_bytes: int  # the placement's high water, rounded up to a page
    exact_calls: int  # mappings when each one maps only what the block needs
    calls_never_above_best: int  # fewest mappings never holding more than the best baseline
    calls_at_step_ends: int  # ... when only every step boundary (and the end) counts
    pytorch_calls: int
    best_baseline_bytes: int


def growth_bound(
    ops: list[int],
    sizes: list[int],
    baselines: Sequence[tuple[list[tuple[int, int]], int]],
    pytorch_calls: int,
    page_bytes: int = PAGE_BYTES,
) -> GrowthBound:
    """The bounds of the module docstring. ``baselines``: each caching baseline's reserved
    timeline ((op index, reserved bytes) after each change, in order) and final peak."""
    records = high_water_records(ops, sizes)

    def up(x: int) -> int:
        return -(-x // page_bytes) * page_bytes

    def best_at(i: int) -> int:  # the best baseline's reserved bytes once op i is done
        held = []
        for timeline, _ in baselines:
            j = bisect_right(timeline, (i, 1 << 62))
            held.append(timeline[j - 1][1] if j else 0)
        return min(held)

    ends = [i for i, op in enumerate(ops) if op == STEP_OP] + [len(ops)]
    end_caps = [best_at(e) for e in ends]
    suffix_min = list(end_caps)
    for k in range(len(suffix_min) - 2, -1, -1):
        suffix_min[k] = min(suffix_min[k], suffix_min[k + 1])

    def greedy(cap: list[int]) -> int:
        mapped = calls = 0
        for (_, high), c in zip(records[1:], cap, strict=True):
            if high > mapped:
                mapped = max(up(high), c // page_bytes * page_bytes)
                calls += 1
        return calls

    moment = [best_at(i) for i, _ in records[1:]]
    at_ends = [suffix_min[bisect_right(ends, i - 1)] for i, _ in records[1:]]
    exact = len({up(h) for _, h in records[1:]})
    return GrowthBound(
        high_water_bytes=up(records[-1][1]),
        exact_calls=exact,
        calls_never_above_best=greedy(moment),
        calls_at_step_ends=greedy(at_ends),
        pytorch_calls=pytorch_calls,
        best_baseline_bytes=min(peak for _, peak in baselines) if baselines else 0,
    )
