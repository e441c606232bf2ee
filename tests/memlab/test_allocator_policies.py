"""Every simulated allocator is correct (no overlapping live blocks) and follows its documented
policy constants (allocator-anchors.md)."""

from __future__ import annotations

import random

import pytest

from stowplan.memlab.alloc_trace import STEP_OP
from stowplan.memlab.allocators import ALLOCATORS, allocator_class
from stowplan.memlab.allocators.bfc import BFCAllocator
from stowplan.memlab.allocators.buddy import BuddyAllocator
from stowplan.memlab.allocators.pytorch import PyTorchCachingAllocator
from stowplan.memlab.device import CostModel, SimDevice
from stowplan.memlab.errors import InvalidFreeError, UnknownAllocatorError
from stowplan.memlab.simulate import replay_ops

MIB = 1 << 20


def random_ops(seed: int, n: int = 3000, steps: int = 4) -> tuple[list[int], list[int], int]:
    """A step-structured random trace: persistent 'weights', then repeated steps of temporaries."""
    rng = random.Random(seed)
    sizes: list[int] = []
    ops: list[int] = []
    for _ in range(20):
        sizes.append(rng.choice([4, 256, 4096, 100_000, 3 * MIB]))
        ops.append(len(sizes) - 1)
    pattern = [rng.choice([4, 64, 5000, 70_000, 1 * MIB + 1, 12 * MIB]) for _ in range(n // steps)]
    for _ in range(steps):
        ops.append(STEP_OP)
        live: list[int] = []
        for size in pattern:
            if rng.random() < 0.1:
                size = rng.randint(1, 2 * MIB)  # a step that differs
            sizes.append(size)
            ops.append(len(sizes) - 1)
            live.append(len(sizes) - 1)
            while live and rng.random() < 0.5:
                ops.append(~live.pop(rng.randrange(len(live))))
        ops.extend(~s for s in live)
    ops.extend(~s for s in range(20))
    live_b = peak = 0
    for op in ops:
        if op == STEP_OP:
            continue
        live_b += sizes[op] if op >= 0 else -sizes[~op]
        peak = max(peak, live_b)
    return ops, sizes, peak


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
@pytest.mark.parametrize("seed", [1, 2])
def test_no_overlap_and_reserved_covers_live(name: str, seed: int) -> None:
    ops, sizes, peak = random_ops(seed)
    r = replay_ops(name, ops, sizes, peak, check=True, repeats=1)
    assert r.peak_reserved_bytes >= peak
    assert r.events == sum(1 for op in ops if op != STEP_OP)


def test_naive_is_the_space_lower_bound_with_a_device_call_per_request() -> None:
    ops, sizes, peak = random_ops(3)
    r = replay_ops("naive", ops, sizes, peak, repeats=1)
    n = sum(1 for op in ops if op >= 0)
    assert r.peak_reserved_bytes == peak and r.fragmentation == 0.0
    assert r.device_malloc_calls == n and r.device_free_calls == n
    cost = CostModel()
    assert r.simulated_overhead_us >= n * (cost.malloc_base_us + cost.free_base_us)


def test_cost_model_charges_free_sync() -> None:
    ops, sizes, peak = random_ops(4, n=200)
    base = replay_ops("naive", ops, sizes, peak, repeats=1)
    synced = replay_ops("naive", ops, sizes, peak, cost=CostModel(free_sync_us=100), repeats=1)
    assert synced.simulated_overhead_us == pytest.approx(
        base.simulated_overhead_us + 100 * base.device_free_calls
    )


def test_bfc_rounding_split_rule_and_region_doubling() -> None:
    dev = SimDevice()
    bfc = BFCAllocator(dev)
    a = bfc.malloc(3 * MIB)  # larger than the 2 MiB first region: doubles to 4 MiB
    assert dev.reserved_bytes == 4 * MIB
    assert bfc.heap.used[a] == 4 * MIB  # 4 MiB chunk < 2 x 3 MiB: handed out whole
    b = bfc.malloc(300)  # next region 8 MiB; 300 -> 512 (256 multiple), split
    assert dev.reserved_bytes == 12 * MIB and bfc.heap.used[b] == 512
    bfc.free(a)
    c = bfc.malloc(1 * MIB)  # 4 MiB free chunk >= 2 x 1 MiB: split
    assert bfc.heap.used[c] == 1 * MIB


def test_pytorch_pools_segment_sizes_and_large_split_rule() -> None:
    dev = SimDevice()
    pt = PyTorchCachingAllocator(dev)
    pt.malloc(100)
    assert dev.reserved_bytes == 2 * MIB  # small pool segment
    x = pt.malloc(5 * MIB)
    assert dev.reserved_bytes == 22 * MIB  # 20 MiB large segment
    pt.malloc(int(15.5 * MIB))  # does not fit the 15 MiB rest; >= 10 MiB: own 16 MiB segment
    assert dev.reserved_bytes == 38 * MIB
    pt.free(x)
    y = pt.malloc(int(14.5 * MIB))  # 20 MiB block: remainder 5.5 MiB > 1 MiB -> split
    assert pt.large.used[y] == int(14.5 * MIB)
    z = pt.malloc(int(4.8 * MIB))  # remainder 0.7 MiB <= 1 MiB: whole block
    assert pt.large.used[z] == int(5.5 * MIB)
    assert dev.malloc_calls == 3


def test_buddy_rounds_to_powers_of_two_and_merges_back() -> None:
    dev = SimDevice()
    bd = BuddyAllocator(dev)
    a = bd.malloc(3000)
    b = bd.malloc(3000)
    assert b - a == 4096
    bd.free(a)
    bd.free(b)
    seg = 8 * MIB
    assert dev.reserved_bytes == seg
    assert bd.free_lists[23] and sum(len(fl) for fl in bd.free_lists) == 1


def test_bad_free_and_unknown_allocator() -> None:
    with pytest.raises(UnknownAllocatorError, match="known:"):
        allocator_class("tcmalloc")
    for name in ("bfc", "pytorch", "bestfit", "buddy", "naive"):
        with pytest.raises(InvalidFreeError):
            allocator_class(name)(SimDevice()).free(12345)
