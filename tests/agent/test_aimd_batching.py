"""AIMD moves the batch cap as Clipper says; the batch queue forms batches under a bounded wait
(pure logic, fake clock)."""

from __future__ import annotations

import math

import pytest

from stowplan.agent.batching import (
    AimdController,
    BatchQueue,
    FixedPolicy,
    Pending,
    derive_target_ms,
    make_policy,
)
from stowplan.agent.config import BatchingConfig, Policy
from stowplan.agent.errors import Overloaded


def test_cap_grows_by_step_on_full_batches_under_target() -> None:
    c = AimdController(max_batch=10, target_ms=20, step=2, initial=1)
    caps = []
    for _ in range(6):
        c.observe(batch_items=c.cap, latency_ms=5)
        caps.append(c.cap)
    assert caps == [3, 5, 7, 9, 10, 10]  # +2 per batch, clamped at max_batch


def test_cap_does_not_grow_on_partial_batches() -> None:
    c = AimdController(max_batch=64, target_ms=20, initial=8)
    for _ in range(10):
        c.observe(batch_items=3, latency_ms=1)  # quiet period: 3 < cap 8 says nothing about 9
    assert c.cap == 8


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        pytest.param(40, 36, id="40*0.9=36"),
        pytest.param(25, 22, id="floor(25*0.9)=22"),
        pytest.param(5, 4, id="floor(4.5)=4"),
        pytest.param(1, 1, id="never-below-1"),
    ],
)
def test_cap_cut_by_ten_percent_over_target(cap: int, expected: int) -> None:
    c = AimdController(max_batch=64, target_ms=20, initial=cap)
    c.observe(batch_items=cap, latency_ms=25)
    assert c.cap == expected


def test_aimd_settles_at_the_largest_batch_under_target() -> None:
    # latency(b) = 2 + 0.5 b ms; target 10 ms -> largest b under target is 16 (10.0 ms).
    c = AimdController(max_batch=64, target_ms=10, initial=1)
    history = []
    for _ in range(200):
        b = c.cap
        c.observe(b, 2 + 0.5 * b)
        history.append(c.cap)
    tail = history[-50:]
    assert max(tail) <= 17 and min(tail) >= 15  # sawtooth 15 -> 16 -> 17 -> 15 ...


def test_target_derived_from_slo_and_duty_cycle() -> None:
    assert derive_target_ms(100) == 50  # alone: 2 t <= slo
    # others use 30 of a 40 ms cycle: 2 t + 30 <= 100 -> t <= 35
    assert derive_target_ms(100, duty_cycle_ms=40, busy_ms=10) == 35
    assert derive_target_ms(10, duty_cycle_ms=100, busy_ms=0) == pytest.approx(0.5)  # floor


def test_make_policy_per_kind() -> None:
    cfg = BatchingConfig(policy=Policy.STATIC, static_batch_size=8, max_queue_delay_ms=3)
    p = make_policy(cfg, max_batch=32, slo_ms=100)
    assert (p.cap, p.max_wait_s) == (8, 0.003)
    assert make_policy(BatchingConfig(policy=Policy.NONE), 32, 100).cap == 1
    assert make_policy(BatchingConfig(policy=Policy.TRITON), 32, 100).cap == 32
    aimd = make_policy(BatchingConfig(), 32, 100)
    # (SLO - default 5 ms bounded wait) / 2
    assert isinstance(aimd, AimdController) and aimd.target_ms == 47.5


def _q(cap: int, wait_s: float, max_requests: int = 100) -> BatchQueue[int]:
    return BatchQueue(FixedPolicy(cap, wait_s), max_requests)


def test_queue_waits_bounded_time_then_dispatches_partial_batch() -> None:
    q = _q(cap=4, wait_s=0.010)
    assert q.ready_at_s() == math.inf
    q.push(Pending(1, 1, arrival_s=1.000, deadline_s=2.0))
    q.push(Pending(2, 1, arrival_s=1.004, deadline_s=2.0))
    assert q.ready_at_s() == pytest.approx(1.010)  # oldest arrival + max wait
    assert [p.payload for p in q.take()] == [1, 2]


def test_queue_is_ready_at_once_when_full_and_respects_cap() -> None:
    q = _q(cap=3, wait_s=1.0)
    for i in range(5):
        q.push(Pending(i, 1, arrival_s=0.0, deadline_s=1.0))
    assert q.ready_at_s() == -math.inf
    assert [p.payload for p in q.take()] == [0, 1, 2]
    assert q.items == 2


def test_multi_item_requests_count_items_not_requests() -> None:
    q = _q(cap=4, wait_s=0.0)
    for i, items in enumerate((3, 2, 1)):
        q.push(Pending(i, items, arrival_s=0.0, deadline_s=1.0))
    assert [p.payload for p in q.take()] == [0]  # 3 + 2 > 4
    assert [p.payload for p in q.take()] == [1, 2]


def test_expired_requests_are_removed() -> None:
    q = _q(cap=4, wait_s=0.0)
    q.push(Pending("late", 1, arrival_s=0.0, deadline_s=0.5))
    q.push(Pending("ok", 1, arrival_s=0.4, deadline_s=0.9))
    assert [p.payload for p in q.expire(now_s=0.6)] == ["late"]
    assert q.items == 1 and q.oldest_deadline_s() == 0.9


def test_full_queue_refuses() -> None:
    q = _q(cap=1, wait_s=0.0, max_requests=2)
    q.push(Pending(1, 1, 0.0, 1.0))
    q.push(Pending(2, 1, 0.0, 1.0))
    with pytest.raises(Overloaded):
        q.push(Pending(3, 1, 0.0, 1.0))


def test_cap_cut_when_a_request_missed_its_slo_end_to_end() -> None:
    c = AimdController(max_batch=64, target_ms=20, initial=30)
    c.observe(batch_items=30, latency_ms=5, missed=True)  # fast batch, but queued too long
    assert c.cap == 27


def test_a_sequential_client_never_waits_for_a_batch_to_fill() -> None:
    q = _q(cap=8, wait_s=0.005)
    for k in range(20):  # back to back: the next one arrives right after the answer, 1 ms later
        t = k * 0.001
        q.push(Pending(k, 1, arrival_s=t, deadline_s=t + 0.010))
        assert q.ready_at_s() == t  # alone in its queue, no overlap seen: ready at once
        assert [p.payload for p in q.take()] == [k]


def test_overlapping_arrivals_wait_for_the_batch_to_fill() -> None:
    q = _q(cap=8, wait_s=0.005)
    for k in range(3):  # three requests 1 ms apart, all queued together
        q.push(Pending(k, 1, arrival_s=1.0 + k / 1000, deadline_s=2.0))
    assert q.overlap > 0.1 and q.gap_s == pytest.approx(0.001)
    assert q.ready_at_s() == pytest.approx(1.005)  # the bounded wait is worth it here
    sparse = _q(cap=8, wait_s=0.005)
    for k in range(3):  # overlapping, but 20 ms apart: no fill expected within 5 ms
        sparse.push(Pending(k, 1, arrival_s=1.0 + k / 50, deadline_s=2.0))
    assert sparse.ready_at_s() == 1.0


def test_shed_keeps_the_newest_request() -> None:
    q = _q(cap=2, wait_s=0.0)
    q.push(Pending("a", 1, arrival_s=0.0, deadline_s=0.5))
    assert q.shed(deadline_before_s=1.0) == []  # alone: never shed
    q.push(Pending("b", 1, arrival_s=0.0, deadline_s=0.5))
    q.push(Pending("c", 1, arrival_s=0.0, deadline_s=1.5))
    assert [p.payload for p in q.shed(deadline_before_s=1.0)] == ["a", "b"]
    q.push(Pending("d", 1, arrival_s=0.0, deadline_s=0.5))  # doomed, but the newest
    assert [p.payload for p in q.shed(deadline_before_s=1.0)] == []
    assert [p.payload for p in q] == ["c", "d"] and q.items == 2
