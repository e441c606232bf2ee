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

from itertools import pairwise


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


def align_repeated_steps(
    offsets: list[int],
    sizes: list[int],
    firsts: list[int],
    lasts: list[int],
    steps: list[list[int]],
    alignment: int = 256,
) -> int:
    """Give the tensors of a repeated step the offsets of their twins in the previous step.

    ``steps`` lists tensor indices per step, in request order. For two consecutive steps with the
    same multiset of sizes, the k-th tensor of size s in the later step moves to the offset of
    the k-th tensor of size s in the earlier one, if no lifetime-overlapping tensor occupies that
    range. The arena never grows (the twin's range lies inside it) and the plan stays valid; a
    steady-state step then reuses the same addresses every time (locality, CUDA Graphs).
    Returns the number of tensors moved. Mutates ``offsets``.
    """
    rounded = [-(-s // alignment) * alignment for s in sizes]
    neighbours = _overlaps(firsts, lasts)
    return _align_pass(offsets, rounded, neighbours, steps)


def _align_pass(
    offsets: list[int], rounded: list[int], neighbours: list[list[int]], steps: list[list[int]]
) -> int:
    """Move each repeated step onto its predecessor's offsets, as a whole where possible.

    Single moves deadlock on cycles (tensor a wants b's place and b wants a's), so the whole step
    moves at once; tensors that then collide go back to their own offsets, repeatedly, until the
    plan is valid (in the worst case nothing moves).
    """
    moved = 0
    for prev, cur in pairwise(steps):
        if sorted(rounded[i] for i in prev) != sorted(rounded[i] for i in cur):
            continue
        twins: dict[tuple[int, int], int] = {}
        seen: dict[int, int] = {}
        for i in prev:
            k = seen.get(rounded[i], 0)
            seen[rounded[i]] = k + 1
            twins[(rounded[i], k)] = i
        seen = {}
        old = {i: offsets[i] for i in cur}
        for i in cur:
            k = seen.get(rounded[i], 0)
            seen[rounded[i]] = k + 1
            offsets[i] = offsets[twins[(rounded[i], k)]]
        for _ in range(len(cur) + 1):
            bad = [i for i in cur if _collides(i, offsets, rounded, neighbours)]
            if not bad:
                break
            for i in bad:
                offsets[i] = old[i]
        else:  # pragma: no cover - cannot happen: all reverted is the original valid plan
            for i in cur:
                offsets[i] = old[i]
        moved += sum(1 for i in cur if offsets[i] != old[i])
    return moved


def _collides(i: int, offsets: list[int], rounded: list[int], neighbours: list[list[int]]) -> bool:
    a = offsets[i]
    b = a + rounded[i]
    return any(offsets[j] < b and a < offsets[j] + rounded[j] for j in neighbours[i])


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
