"""Compaction for a fixed pool: the free gaps around pinned blocks, and best-fit re-placement.

When a pool's free bytes suffice but no single block does, some live blocks can be moved
(device-to-device copies) to merge the free space. These two pure helpers are the arithmetic of
that re-placement: :func:`gaps` lists the free ``[start, end)`` ranges around the blocks that
stay, :func:`best_fit_into` places named blocks largest first into the smallest gap that holds
each. Callers: :class:`stowplan.agent.memory.ResidencyManager` (relocating idle models before
offloading any). Standard library only, so the agent can import it; no device, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence


def gaps(taken: Sequence[tuple[int, int]], limit: int) -> list[list[int]]:
    """Free [start, end) ranges of [0, limit) around the (offset, size) blocks in ``taken``."""
    out: list[list[int]] = []
    cursor = 0
    for off, size in sorted(taken):
        if off > cursor:
            out.append([cursor, off])
        cursor = max(cursor, off + size)
    if cursor < limit:
        out.append([cursor, limit])
    return out


def best_fit_into(free: list[list[int]], items: Sequence[tuple[str, int]]) -> dict[str, int] | None:
    """Place (name, size) items largest first, each into the smallest gap that holds it.

    Returns name -> offset, or None if some item fits nowhere. Mutates ``free``.
    """
    layout: dict[str, int] = {}
    for name, size in sorted(items, key=lambda x: (-x[1], x[0])):
        best = -1
        for g, (start, end) in enumerate(free):
            if end - start >= size and (best < 0 or end - start < free[best][1] - free[best][0]):
                best = g
        if best < 0:
            return None
        layout[name] = free[best][0]
        free[best][0] += size
    return layout


__all__ = ["best_fit_into", "gaps"]
