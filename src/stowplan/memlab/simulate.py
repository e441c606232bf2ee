"""Replay a trace through an allocator on a simulated device and measure it.

The hot loop is plain Python over lists of ints (no objects per event): an op ``slot >= 0``
allocates ``sizes[slot]``, ``~slot`` frees it, :data:`~stowplan.memlab.alloc_trace.STEP_OP` passes a
step hint. ``check=True`` additionally verifies that no two live blocks overlap (slow; tests).
Callers: the ``memsim`` command, the report and tests. Must not print or parse.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from stowplan.memlab.alloc_trace import STEP_OP, Trace
from stowplan.memlab.allocators import allocator_class
from stowplan.memlab.allocators.base import Allocator
from stowplan.memlab.allocators.stowplan import Profile, StowplanAllocator, StowplanWarmAllocator
from stowplan.memlab.device import CostModel, SimDevice
from stowplan.memlab.errors import MemlabError
from stowplan.memlab.metrics import SimResult, fragmentation, step_repeat_rate


class OverlapError(MemlabError):
    """``check=True`` found two live blocks that overlap (an allocator bug)."""


def replay_ops(
    allocator_name: str,
    ops: list[int],
    sizes: list[int],
    peak_live_bytes: int,
    cost: CostModel | None = None,
    check: bool = False,
    profile: Profile | None = None,
    repeats: int = 3,
) -> SimResult:
    """Replay ``ops`` through a fresh allocator ``allocator_name``.

    The replay is deterministic; it runs ``repeats`` times on fresh allocators and the fastest
    loop gives ``wall_s``/``events_per_second`` (best of N, to damp a noisy shared machine).
    ``stowplan-warm`` starts from ``profile`` (default: the profile a cold stowplan run learns on
    these same ops, i.e. a second run of the same workload). Allocator construction, including
    planning, is timed separately (``setup_s``) from the replay loop (``wall_s``).
    """
    cls = allocator_class(allocator_name)
    if issubclass(cls, StowplanWarmAllocator) and profile is None:
        profile = learn_profile(ops, sizes)
    wall = float("inf")
    for _ in range(max(1, repeats)):
        device, alloc, addrs, setup, loop_s = _one_replay(cls, profile, ops, sizes, cost, check)
        wall = min(wall, loop_s)
    n_malloc = n_free = 0
    for op in ops:
        if op >= 0:
            n_malloc += 1
        elif op != STEP_OP:
            n_free += 1
    c = device.cost
    overhead = device.time_us
    if alloc.caching:
        overhead += n_malloc * c.hit_malloc_us + n_free * c.hit_free_us
    events = n_malloc + n_free
    return SimResult(
        allocator=allocator_name,
        events=events,
        peak_live_bytes=peak_live_bytes,
        peak_reserved_bytes=device.peak_reserved_bytes,
        device_malloc_calls=device.malloc_calls,
        device_free_calls=device.free_calls,
        simulated_overhead_us=overhead,
        fragmentation=fragmentation(peak_live_bytes, device.peak_reserved_bytes),
        step_repeat_rate=step_repeat_rate(ops, sizes, addrs),
        wall_s=wall,
        setup_s=setup,
        events_per_second=events / wall if wall > 0 else float("inf"),
        timeline=[(0, 0), *device.timeline, (len(ops), device.reserved_bytes)],
    )


def _one_replay(
    cls: type[Allocator],
    profile: Profile | None,
    ops: list[int],
    sizes: list[int],
    cost: CostModel | None,
    check: bool,
) -> tuple[SimDevice, Allocator, list[int], float, float]:
    device = SimDevice(cost)
    t_setup = time.perf_counter()
    if issubclass(cls, StowplanWarmAllocator):
        alloc: Allocator = cls(device, profile)
    else:
        alloc = cls(device)
    setup = time.perf_counter() - t_setup
    addrs = [0] * len(sizes)
    malloc = alloc.malloc
    free = alloc.free
    step = alloc.step
    t0 = time.perf_counter()
    if check:
        _replay_checked(alloc, device, ops, sizes, addrs)
    else:
        for i, op in enumerate(ops):
            if op >= 0:
                device.clock = i
                addrs[op] = malloc(sizes[op])
            elif op != STEP_OP:
                device.clock = i
                free(addrs[~op])
            else:
                step()
    return device, alloc, addrs, setup, time.perf_counter() - t0


def learn_profile(ops: list[int], sizes: list[int]) -> Profile:
    """Replay ``ops`` through a cold stowplan allocator and return what it learned."""
    alloc = StowplanAllocator(SimDevice())
    addrs = [0] * len(sizes)
    for op in ops:
        if op >= 0:
            addrs[op] = alloc.malloc(sizes[op])
        elif op != STEP_OP:
            alloc.free(addrs[~op])
        else:
            alloc.step()
    return alloc.profile()


def _replay_checked(
    alloc: Allocator, device: SimDevice, ops: list[int], sizes: list[int], addrs: list[int]
) -> None:
    starts: list[int] = []  # sorted starts of live blocks
    ends: dict[int, int] = {}
    for i, op in enumerate(ops):
        device.clock = i
        if op == STEP_OP:
            alloc.step()
            continue
        if op >= 0:
            a = alloc.malloc(sizes[op])
            e = a + sizes[op]
            j = bisect_left(starts, a)
            if (j < len(starts) and starts[j] < e) or (j > 0 and ends[starts[j - 1]] > a):
                raise OverlapError(f"{alloc.name}: block {a:#x}+{sizes[op]} overlaps (op {i})")
            starts.insert(j, a)
            ends[a] = e
            addrs[op] = a
        else:
            a = addrs[~op]
            del starts[bisect_left(starts, a)]
            del ends[a]
            alloc.free(a)


def replay(
    trace: Trace,
    allocator_name: str,
    cost: CostModel | None = None,
    allocator_filter: str | None = None,
    check: bool = False,
    profile: Profile | None = None,
    repeats: int = 3,
) -> SimResult:
    """Replay one trace (tensor allocations of its main allocator name) through one allocator."""
    ops, sizes = trace.replay_ops(allocator_filter)
    peak = trace.peak_live_bytes(allocator_filter)
    return replay_ops(
        allocator_name, ops, sizes, peak, cost=cost, check=check, profile=profile, repeats=repeats
    )
