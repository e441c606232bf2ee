"""The agent's residency sequence as a lab trace: model blocks placed and taken out of a pool.

:class:`stowplan.agent.memory.ResidencyManager` (constructed with ``record=True``) logs every
block it places (a load, a prefetch, the new place of a relocated model) and takes out (an
offload, an unload, the old place of a relocated model) as ``("alloc" | "free", model, bytes)``.
:func:`residency_ops` turns that log into the replay ops of :mod:`stowplan.memlab.simulate`, so
the lab's allocators can be measured on the agent's own load/offload/prefetch sequence.
:func:`demo_workload` is the deterministic request sequence ``stowplan memsim --residency``
drives the agent's manager with. Callers: the ``memsim`` command and tests. Pure functions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from stowplan.memlab.errors import MemlabError

MIB = 1 << 20


class ResidencyTraceError(MemlabError):
    """A free of a model with no block in the pool (a malformed residency log)."""


def residency_ops(events: Sequence[tuple[str, str, int]]) -> tuple[list[int], list[int], int]:
    """(ops, sizes, peak live bytes) of a residency log; one slot per placed block."""
    ops: list[int] = []
    sizes: list[int] = []
    live_slot: dict[str, int] = {}
    live = peak = 0
    for kind, model, size in events:
        if kind == "alloc":
            live_slot[model] = len(sizes)
            ops.append(len(sizes))
            sizes.append(size)
            live += size
            peak = max(peak, live)
        else:
            slot = live_slot.pop(model, None)
            if slot is None:
                raise ResidencyTraceError(f"free of {model!r}, which holds no block")
            ops.append(~slot)
            live -= sizes[slot]
    for slot in live_slot.values():  # still resident at the end: freed at teardown
        ops.append(~slot)
    return ops, sizes, peak


def demo_workload(
    models: int = 8, requests: int = 3000, seed: int = 0
) -> tuple[dict[str, int], list[str]]:
    """Model sizes (log-uniform 64-768 MiB, 256 B aligned) and a Zipf(1.1) request order."""
    rng = random.Random(seed)
    sizes = {f"m{i}": int(64 * MIB * (12 ** rng.random())) // 256 * 256 for i in range(models)}
    names = list(sizes)
    weights = [1 / (k + 1) ** 1.1 for k in range(models)]
    return sizes, rng.choices(names, weights=weights, k=requests)


__all__ = ["ResidencyTraceError", "demo_workload", "residency_ops"]
