"""stowplan's trace-aware allocator: learn the step, then replay a planned layout.

An inference server runs the same step again and again, and a model's replicas and reloads run
the same steps as its first run. The allocator therefore works from a *profile*: the sizes and
lifetimes (event ordinals) of the requests of >= ``PLAN_MIN_BYTES`` that a run made.

* **Warm** (constructed with the profile of an earlier run of the same model): offsets for every
  profiled tensor are planned up front (greedy by size, :mod:`stowplan.memlab.planner`) into one
  arena, reserved with a single exact-size cudaMalloc on first use. The k-th request of size s
  takes the planned offset of the k-th profiled tensor of size s, after a check that the range
  is free (a sorted list of live arena blocks). Tensors of a step that repeats the previous one
  are given their twins' offsets where the plan allows (:func:`align_repeated_steps`), so a
  steady-state step reuses its addresses. Requests below ``PLAN_MIN_BYTES`` use a small best-fit
  heap whose first segment is sized from the profile, behind an exact-size LIFO cache of freed
  small blocks (a repeated step gets them back in the same order).
* **Cold** (no profile, the first run ever): requests are served online by best fit with
  coalescing in ONE virtually contiguous range backed by memory mapped on demand
  (:class:`~stowplan.memlab.allocators.base.ExpandableHeap`; a block past the mapped end maps up
  to its end plus min(1.75 x request, 1/12 of the mapped size) + min(12 MiB, 2 x its end)), so
  there are no segment-end holes.
  At a step hint, a step that repeated the previous one (same size multiset) is planned into an
  arena carved from a free hole of the mapped part (never mapping for a plan, so planning
  cannot raise the peak); later steps take planned offsets as above, and a step whose size
  multiset differs triggers a replan. One-off steps (TF's tracing pass) are not planned.

Anything without a free planned slot (a step that differs, a request that outlives its step)
falls back to the online heaps, so the allocator stays correct on any sequence; only space and
locality degrade. :meth:`StowplanAllocator.profile` returns the profile of the run so far (what
the agent persists per model). Caller: the allocator registry, the simulator.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from itertools import pairwise

from stowplan.memlab.allocators.base import Allocator, CoalescingHeap, ExpandableHeap
from stowplan.memlab.device import SimDevice
from stowplan.memlab.planner import align_repeated_steps, plan_offsets

ALIGNMENT = 256
PLAN_MIN_BYTES = 4096
MAX_STEP_TENSORS = 20000
SMALL_SEGMENT = 64 * 1024
SEARCH_WINDOW = 8  # planned slots of the same size tried around the expected one
LARGE_SEGMENT = 2 << 20  # warm fallback heap: smallest segment
MAP_AHEAD_REQUESTS = 1.75  # cold: map this many requests' worth beyond a block that needs more
MAP_AHEAD_FRACTION = 12  # ... but at most 1/12 of what is mapped
MAP_AHEAD_BYTES = 12 << 20  # ... plus a floor: 12 MiB, or twice the block's end if less


@dataclass(frozen=True)
class Profile:
    """What one run taught: large requests' sizes and lifetimes, and the small-heap peak."""

    sizes: tuple[int, ...]
    firsts: tuple[int, ...]
    lasts: tuple[int, ...]
    small_peak_bytes: int
    step_starts: tuple[int, ...] = ()  # index of the first request of each step (step hints)


class StowplanAllocator(Allocator):
    name = "stowplan"

    def __init__(self, device: SimDevice, profile: Profile | None = None) -> None:
        super().__init__(device)
        self._small_first = SMALL_SEGMENT
        if profile is not None and profile.small_peak_bytes > 0:
            self._small_first = -(-profile.small_peak_bytes // ALIGNMENT) * ALIGNMENT
        self.large: CoalescingHeap
        self.small: CoalescingHeap
        if profile is None:  # cold: every request in one expandable range
            self.large = ExpandableHeap(device, _split, _map_ahead)
            self.small = self.large
        else:
            self.large = CoalescingHeap(device, self._large_segment, _split)
            self.small = CoalescingHeap(device, self._small_segment, _split)
        self.small_live = 0
        self.small_cache: dict[int, list[int]] = {}  # freed small blocks by size (LIFO)
        self.small_peak = 0
        self.t = 0
        # run-wide record of large requests
        self.rec_size: list[int] = []
        self.rec_first: list[int] = []
        self.rec_last: list[int] = []
        self.rec_at: dict[int, int] = {}
        self.step_start = 0  # index into rec_* where the current step began
        self.step_starts: list[int] = []
        # the plan in force
        self.warm = profile is not None
        self.plan: dict[tuple[int, int], int] = {}
        self.plan_signature: list[int] | None = None
        self.last_signature: list[int] | None = None  # the previous step's sizes (cold)
        self.arena_base = -1
        self.arena_size = 0
        self.arena_pending = 0  # warm: arena reserved lazily on first large request
        self.occ: dict[int, int] = {}
        self.live_starts: list[int] = []
        self.live_end: dict[int, int] = {}
        self.planned_hits = 0
        self.planned_misses = 0
        self.plans_made = 0
        if profile is not None and profile.sizes:
            self._install_plan(profile)

    # -- growth policies -------------------------------------------------------------------
    def _large_segment(self, request: int) -> int:
        if self.warm:  # the plan covers the expected load: grow only by what is missing
            return request
        if request < LARGE_SEGMENT:
            return min(LARGE_SEGMENT, max(4 * request, SMALL_SEGMENT))
        return -(-request // LARGE_SEGMENT) * LARGE_SEGMENT

    def _small_segment(self, request: int) -> int:
        first, self._small_first = self._small_first, 0
        if first:
            return max(request, first)
        grown = sum(self.small.segments.values())
        return max(request, SMALL_SEGMENT, grown)

    # -- requests --------------------------------------------------------------------------
    def malloc(self, size: int) -> int:
        t = self.t
        self.t = t + 1
        r = -(-size // ALIGNMENT) * ALIGNMENT
        if self.arena_pending:
            self._reserve_warm_arena()
        if r < PLAN_MIN_BYTES:
            live = self.small_live + r
            self.small_live = live
            if live > self.small_peak:
                self.small_peak = live
            stack = self.small_cache.get(r) if self.warm else None
            if stack:
                return stack.pop()
            return self.small.malloc(r)
        addr = -1
        if self.plan:
            occ = self.occ
            n = occ.get(r, 0)
            occ[r] = n + 1
            addr = self._planned(r, n)
            if addr < 0:
                # another run, another thread interleaving: the k-th tensor of a size may be
                # the (k +- d)-th one of the profile; try the neighbouring planned slots
                for d in range(1, SEARCH_WINDOW + 1):
                    addr = self._planned(r, n + d)
                    if addr >= 0 or n < d:
                        break
                    addr = self._planned(r, n - d)
                    if addr >= 0:
                        break
            if addr >= 0:
                self.planned_hits += 1
            else:
                self.planned_misses += 1
                addr = self._arena_gap(r)
        if addr < 0:
            addr = self.large.malloc(r)
        self.rec_at[addr] = len(self.rec_size)
        self.rec_size.append(r)
        self.rec_first.append(t)
        self.rec_last.append(-1)
        return addr

    def _planned(self, r: int, n: int) -> int:
        """Claim the planned slot of the n-th tensor of size r if its range is free, else -1."""
        off = self.plan.get((r, n))
        if off is None:
            return -1
        a = self.arena_base + off
        end = a + r
        starts = self.live_starts
        j = bisect_left(starts, a)
        if (j < len(starts) and starts[j] < end) or (j > 0 and self.live_end[starts[j - 1]] > a):
            return -1
        starts.insert(j, a)
        self.live_end[a] = end
        return a

    def _arena_gap(self, r: int) -> int:
        """Best fit for an unplanned request in the arena's currently free gaps, else -1.

        Only on a plan miss (rare); the block may later make a planned slot miss in turn, which
        falls back the same way, so correctness never depends on the plan.
        """
        if self.arena_base < 0 or self.arena_pending:
            return -1
        best = -1
        best_gap = -1
        cursor = self.arena_base
        limit = self.arena_base + self.arena_size
        starts = self.live_starts
        ends = self.live_end
        for a in starts:
            if a >= limit:
                break
            gap = a - cursor
            if gap >= r and (best_gap < 0 or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, ends[a])
        gap = limit - cursor
        if gap >= r and (best_gap < 0 or gap < best_gap):
            best = cursor
        if best >= 0:
            starts.insert(bisect_left(starts, best), best)
            ends[best] = best + r
        return best

    def _reserve_warm_arena(self) -> None:
        """Warm start: one cudaMalloc for the planned arena and the small heap's first segment."""
        small, self._small_first = self._small_first, 0
        base = self.device.malloc(self.arena_pending + small)
        self.arena_base = base
        if small:
            self.small.adopt(base + self.arena_pending, small)
        self.arena_pending = 0

    def free(self, addr: int) -> None:
        t = self.t
        self.t = t + 1
        i = self.rec_at.pop(addr, None)
        if i is None:
            size = self.small.used[addr]
            self.small_live -= size
            if self.warm:
                # exact-size LIFO cache: a repeated step gets its small blocks back in order
                self.small_cache.setdefault(size, []).append(addr)
            else:
                self.small.free(addr)
            return
        self.rec_last[i] = t
        if addr in self.live_end:
            del self.live_end[addr]
            starts = self.live_starts
            del starts[bisect_left(starts, addr)]
        else:
            self.large.free(addr)

    # -- learning ----------------------------------------------------------------------------
    def step(self) -> None:
        begin, self.step_start = self.step_start, len(self.rec_size)
        self.step_starts.append(self.step_start)
        if self.warm:
            return
        self.occ = {}
        sizes, firsts, lasts = [], [], []
        for i in range(begin, len(self.rec_size)):
            last = self.rec_last[i]
            if last >= 0:
                sizes.append(self.rec_size[i])
                firsts.append(self.rec_first[i])
                lasts.append(last)
        if not sizes or len(sizes) > MAX_STEP_TENSORS:
            return
        signature = sorted(sizes)
        seen_before, self.last_signature = signature == self.last_signature, signature
        if signature == self.plan_signature or not seen_before:
            return  # plan a step once it has repeated: a one-off step's arena would be a hole
        offsets, arena = plan_offsets(sizes, firsts, lasts, ALIGNMENT)
        if arena > self.arena_size:
            if self.live_starts:
                return  # the old arena still holds live blocks; keep its plan
            heap = self.large
            if self.arena_base >= 0:
                heap.free(self.arena_base)  # the old arena merges back into its hole
                self.arena_base = -1
                self.arena_size = 0
                self.plan = {}
                self.plan_signature = None
            if heap.largest_free() < arena:
                return  # no free hole holds the arena: stay online (never grow for a plan)
            self.arena_base = heap.malloc(arena)
            self.arena_size = arena
        self._set_plan(sizes, firsts, offsets)
        self.plan_signature = signature

    def _install_plan(self, profile: Profile) -> None:
        sizes, firsts = list(profile.sizes), list(profile.firsts)
        offsets, arena = plan_offsets(sizes, firsts, list(profile.lasts), ALIGNMENT)
        bounds = [0, *profile.step_starts, len(sizes)]
        steps = [list(range(a, b)) for a, b in pairwise(bounds) if b > a]
        align_repeated_steps(offsets, sizes, firsts, list(profile.lasts), steps, ALIGNMENT)
        self.arena_pending = arena
        self.arena_size = arena
        self._set_plan(sizes, firsts, offsets)

    def _set_plan(self, sizes: list[int], firsts: list[int], offsets: list[int]) -> None:
        seen: dict[int, int] = {}
        plan: dict[tuple[int, int], int] = {}
        for i in sorted(range(len(sizes)), key=lambda i: firsts[i]):
            s = sizes[i]
            n = seen.get(s, 0)
            seen[s] = n + 1
            plan[(s, n)] = offsets[i]
        self.plan = plan
        self.plans_made += 1

    def profile(self) -> Profile:
        """The profile of the run so far (still-live requests last until now)."""
        now = self.t
        return Profile(
            sizes=tuple(self.rec_size),
            firsts=tuple(self.rec_first),
            lasts=tuple(now if b < 0 else b for b in self.rec_last),
            small_peak_bytes=self.small_peak,
            step_starts=tuple(self.step_starts),
        )


def _map_ahead(end_bytes: int, request: int) -> int:
    """Cold growth: map past a new block's end by 1.75 requests, at most a twelfth of the
    mapped size (big requests announce big activations; the cap bounds the unused tail), plus
    a floor of 12 MiB or twice the block's end if that is less (the weights of a model arrive
    as a run of small blocks: the floor maps them in a few steps, and a tiny run still maps
    one page). Tuned on the lab's traces (docs/memlab.md, "Cold start"): the calls stay at or
    below PyTorch's and the peak at or below the best baseline's on all of them."""
    ahead = min(int(MAP_AHEAD_REQUESTS * request), end_bytes // MAP_AHEAD_FRACTION)
    return ahead + min(MAP_AHEAD_BYTES, 2 * end_bytes)


def _split(block: int, request: int) -> bool:
    return block - request >= ALIGNMENT


class StowplanWarmAllocator(StowplanAllocator):
    """stowplan's allocator started with the profile of an earlier run of the same model.

    This is what the agent runs when a model it has served before is loaded again (a reload
    after offload, a restart, another replica); the very first run of a model is cold.
    """

    name = "stowplan-warm"

    def __init__(self, device: SimDevice, profile: Profile | None = None) -> None:
        super().__init__(device, profile if profile is not None else EMPTY_PROFILE)


EMPTY_PROFILE = Profile(sizes=(), firsts=(), lasts=(), small_peak_bytes=0)
