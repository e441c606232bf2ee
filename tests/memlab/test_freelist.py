"""The shared free list (lab heaps and the agent's residency pool): best fit, split, coalesce."""

from __future__ import annotations

from stowplan.memlab.freelist import FreeList


def test_best_fit_takes_the_smallest_block_lowest_offset_first() -> None:
    free = FreeList()
    for off, size in ((0, 100), (200, 40), (300, 40), (400, 60)):
        free.insert(off, size)
    assert free.take(30) == (200, 30)  # smallest block >= 30, lowest offset among equals
    assert free.take(40) == (300, 40)
    assert free.take(101) is None
    assert free.largest() == 100 and free.total() == 100 + 10 + 60


def test_split_rule_hands_out_the_whole_block() -> None:
    free = FreeList.span(0, 64)
    assert free.take(40, lambda block, req: block >= 2 * req) == (0, 64)
    assert len(free) == 0


def test_give_merges_with_both_neighbours() -> None:
    free = FreeList.span(0, 300)
    a, _ = free.take(100) or (0, 0)
    b, _ = free.take(100) or (0, 0)
    free.give(a, 100)
    assert free.largest() == 100 and len(free) == 2
    free.give(b, 100)
    assert len(free) == 1 and free.largest() == 300 and free.at == {0: 300}
    copy = free.copy()
    copy.take(10)
    assert free.at == {0: 300}  # the copy is independent


def test_take_lowest_is_first_fit_by_offset() -> None:
    from stowplan.memlab.freelist import FreeList

    free = FreeList.span(0, 100)
    assert free.take(30) == (0, 30) and free.take(10) == (30, 10) and free.take(20) == (40, 20)
    free.give(0, 30)  # free: [0, 30) and [60, 100)
    free.give(40, 20)  # merges with [60, 100): [40, 100)
    assert free.take(25) == (0, 25)  # best fit: the 30-byte block is the smallest that holds it
    free.give(0, 25)
    assert free.take_lowest(5) == (0, 5)  # first fit: lowest offset, whatever its size
    assert free.take_lowest(61) is None
    assert free.take_lowest(60) == (40, 60) and free.total() == 25
