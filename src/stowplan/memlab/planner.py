"""Offline offset planning for one execution step: greedy by size (Pisarchyk & Lee 2020).

Given tensors with sizes and lifetimes ``[first, last]`` (event ordinals), assign each an
offset in one arena so that tensors whose lifetimes overlap never overlap in memory. Largest
first; each tensor goes into the smallest gap between already placed, lifetime-overlapping
tensors that fits, else on top of the highest one. The arena size is at least the peak live
bytes of the step (the lower bound) and is usually within a few percent of it.

Callers: :mod:`stowplan.memlab.allocators.stowplan` (plans a learned step) and the report (the
offline floor next to the lower bound). Pure function, no device, no I/O.
"""

from __future__ import annotations


def plan_offsets(
    sizes: list[int], firsts: list[int], lasts: list[int], alignment: int = 256
) -> tuple[list[int], int]:
    """Return (offset per tensor, arena size). Lifetimes are inclusive event ordinals.

    Runs the greedy placement in three orders (largest first; by size x lifetime, largest
    first; by allocation time, i.e. best fit with known lifetimes) and keeps the smallest arena:
    no single order wins on every network (DenseNet's concatenations favour time order).
    """
    n = len(sizes)
    rounded = [-(-s // alignment) * alignment for s in sizes]
    neighbours = _overlaps(firsts, lasts)
    orders = (
        sorted(range(n), key=lambda i: (-rounded[i], firsts[i])),
        sorted(range(n), key=lambda i: (-rounded[i] * (lasts[i] - firsts[i] + 1), firsts[i])),
        sorted(range(n), key=lambda i: (firsts[i], -rounded[i])),
    )
    best_offsets, best_arena = _place(orders[0], rounded, neighbours)
    for order in orders[1:]:
        offsets, arena = _place(order, rounded, neighbours)
        if arena < best_arena:
            best_offsets, best_arena = offsets, arena
    return best_offsets, best_arena


def _place(
    order: list[int], rounded: list[int], neighbours: list[list[int]]
) -> tuple[list[int], int]:
    offsets = [-1] * len(rounded)
    arena = 0
    for i in order:
        size = rounded[i]
        busy = sorted(
            (offsets[j], offsets[j] + rounded[j]) for j in neighbours[i] if offsets[j] >= 0
        )
        best_off = -1
        best_gap = -1
        cursor = 0
        for start, end in busy:
            gap = start - cursor
            if gap >= size and (best_gap < 0 or gap < best_gap):
                best_gap = gap
                best_off = cursor
            if end > cursor:
                cursor = end
        if best_off < 0:
            best_off = cursor
        offsets[i] = best_off
        if best_off + size > arena:
            arena = best_off + size
    return offsets, arena


def _overlaps(firsts: list[int], lasts: list[int]) -> list[list[int]]:
    """For each tensor, the tensors whose lifetimes overlap its own (sweep over time)."""
    n = len(firsts)
    order = sorted(range(n), key=lambda i: firsts[i])
    neighbours: list[list[int]] = [[] for _ in range(n)]
    active: list[int] = []
    for i in order:
        a = firsts[i]
        active = [j for j in active if lasts[j] >= a]
        for j in active:
            neighbours[i].append(j)
            neighbours[j].append(i)
        active.append(i)
    return neighbours


def step_peak(sizes: list[int], firsts: list[int], lasts: list[int]) -> int:
    """Peak of live bytes over the step (the lower bound of any plan)."""
    events: list[tuple[int, int]] = []
    for s, a, b in zip(sizes, firsts, lasts, strict=True):
        events.append((a, s))
        events.append((b + 1, -s))
    events.sort(key=lambda e: (e[0], e[1]))
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    return peak
