"""AIMD under sustained overload: the early drop's jitter margin and the bounded wait in the
target keep the cap near the best static size (pure scheduler and simulator, fake clock)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stowplan.agent.batching import (
    AimdController,
    BatchPolicy,
    BatchQueue,
    FixedPolicy,
    Pending,
    derive_target_ms,
    make_policy,
)
from stowplan.agent.config import BatchingConfig
from stowplan.agent.executor import Lane, SliceScheduler
from stowplan.agentbench.simulate import SimModel, max_goodput_per_s, poisson_arrivals, simulate

# ResNet-50 on an A100, FP16 (the published fit the batching benchmark uses)
BASE_MS, PER_ITEM_MS, SLO_MS, MAX_BATCH = 0.9461, 0.367541, 20.0, 128


def test_target_leaves_room_for_the_bounded_wait() -> None:
    assert derive_target_ms(20) == 10
    assert derive_target_ms(20, max_wait_ms=2) == 9  # wait 2 + batch 9 + batch 9 = 20
    assert derive_target_ms(100, duty_cycle_ms=40, busy_ms=10, max_wait_ms=5) == 32.5
    aimd = make_policy(BatchingConfig(max_queue_delay_ms=4), 32, slo_ms=50)
    assert isinstance(aimd, AimdController) and aimd.target_ms == 23


def test_early_drop_keeps_a_jitter_margin() -> None:
    def backlog(s: SliceScheduler) -> Lane:
        lane = Lane("m", BatchQueue(FixedPolicy(1, 0.0)), slo_s=0.100)  # cap 1: a backlog
        s.lanes = {"m": lane}
        s.charge(lane, 0.010)  # smoothed batch time 10 ms
        lane.queue.push(Pending("tight", 1, arrival_s=0.0, deadline_s=1.011))  # 11 ms < 12
        lane.queue.push(Pending("ok", 1, arrival_s=0.0, deadline_s=1.013))  # slack 13 ms
        lane.queue.push(Pending("newest", 1, arrival_s=0.95, deadline_s=1.05))
        return lane

    s = SliceScheduler()  # drop_margin 1.2 by default
    backlog(s)
    assert [p.payload for _, p in s.expire(now_s=1.0)] == ["tight"]
    bare = SliceScheduler(drop_margin=1.0)
    backlog(bare)
    assert bare.expire(now_s=1.0) == []  # the first version kept it, and it finished late


def test_real_overload_still_sheds_but_never_the_newest_request() -> None:
    s = SliceScheduler()
    lane = Lane("m", BatchQueue(FixedPolicy(2, 0.0)), slo_s=0.010)
    s.lanes = {"m": lane}
    s.charge(lane, 0.002)
    for k in range(5):  # five requests, all past their deadline
        lane.queue.push(Pending(k, 1, arrival_s=0.0, deadline_s=0.010))
    assert [p.payload for _, p in s.expire(now_s=1.0)] == [0, 1, 2, 3]
    assert [p.payload for p in lane.queue] == [4]  # the newest is kept, and runs (late)
    assert s.expire(now_s=2.0) == []  # a lone request is never shed


def test_shedding_with_no_batch_run_decays_the_estimate() -> None:
    s = SliceScheduler()
    lane = Lane("m", BatchQueue(FixedPolicy(1, 0.0)), slo_s=0.100)
    s.lanes = {"m": lane}
    s.charge(lane, 0.040)  # one very slow batch: margin min(48, 50) ms
    for now in (1.0, 1.05, 1.125, 1.25):  # it sheds, and no batch runs for two SLOs
        for k in range(3):
            lane.queue.push(Pending(k, 1, arrival_s=now, deadline_s=now + 0.010))
        assert s.expire(now_s=now)
    assert lane.est_batch_s == pytest.approx(0.010)  # halved at 1.125 and at 1.25 s
    s.charge(lane, 0.002)  # a batch ran: its latency is the estimate's news again
    assert lane.shedding_since_s is None


def test_early_drop_never_refuses_a_fresh_request() -> None:
    s = SliceScheduler(drop_margin=1.2)
    lane = Lane("m", BatchQueue(FixedPolicy(8, 0.0)), slo_s=0.010)
    s.lanes = {"m": lane}
    s.charge(lane, 0.050)  # a model slower than its SLO: margin capped at SLO / 2
    lane.queue.push(Pending("fresh", 1, arrival_s=1.0, deadline_s=1.010))
    assert s.expire(now_s=1.0) == []


def _goodput(make: Callable[[], BatchPolicy], arrivals: list[float], margin: float) -> float:
    m = SimModel("m", BASE_MS, PER_ITEM_MS, SLO_MS, arrivals, make)
    return simulate([m], seed=0, drop_margin=margin)["m"].goodput


def _fixed(cap: int, wait_s: float) -> Callable[[], BatchPolicy]:
    return lambda: FixedPolicy(cap, wait_s)


def test_aimd_keeps_static_goodput_under_sustained_overload() -> None:
    margin = 1.2
    capacity = max_goodput_per_s(BASE_MS, PER_ITEM_MS, SLO_MS, MAX_BATCH)
    arrivals = poisson_arrivals(1.5 * capacity, 4.0, seed=0)
    wait_s = 0.002
    static = max(_goodput(_fixed(b, wait_s), arrivals, margin) for b in (16, 19, 21, 24))
    target = derive_target_ms(SLO_MS, max_wait_ms=wait_s * 1000)
    aimd = _goodput(lambda: AimdController(MAX_BATCH, target, max_wait_s=wait_s), arrivals, margin)
    assert aimd >= 0.95 * static
    # the first version (bare-mean early drop, target without the wait) lost more than 5 %
    old = _goodput(
        lambda: AimdController(MAX_BATCH, derive_target_ms(SLO_MS), max_wait_s=wait_s),
        arrivals,
        1.0,
    )
    assert old < aimd


def test_a_lone_request_on_an_idle_lane_is_never_dropped() -> None:
    # issue 12 item 4, the wedged model: a lone request used to be held max_queue_delay for its
    # batch to fill and reached the early-drop test with SLO - delay of slack, less than the
    # margin min(1.2 x smoothed batch, SLO/2); est_batch_s and the AIMD cap change only when a
    # batch runs, so once dropped every later lone request was dropped too
    s = SliceScheduler()
    lane = Lane("mlp", BatchQueue(FixedPolicy(4, 0.005)), slo_s=0.010)  # cap 4, wait 5 ms
    s.lanes = {"mlp": lane}
    s.charge(lane, 0.005)  # one 5 ms batch under CPU contention: margin = min(6, 5) ms
    refused, ran = [], []
    for k in range(3):  # a sequential client: one request at a time, the queue otherwise empty
        t = float(k)
        lane.queue.push(Pending(k, 1, arrival_s=t, deadline_s=t + 0.010))
        assert s.ready_at_s(lane) == t  # no second arrival expected: no wait to fill
        # the device thread wakes late under contention, even past the deadline
        for now in (t + 0.0051, t + 0.020):
            refused += [p.payload for _, p in s.expire(now)]
        picked, _ = s.pick(t + 0.020)
        assert picked is lane
        ran += [p.payload for p in picked.queue.take()]
        s.charge(picked, 0.001)
    assert refused == [] and ran == [0, 1, 2]


def test_the_fill_wait_ends_while_the_oldest_request_can_still_finish() -> None:
    s = SliceScheduler()
    lane = Lane("m", BatchQueue(FixedPolicy(64, 0.008)), slo_s=0.010)  # waits up to 8 ms
    s.lanes = {"m": lane}
    s.charge(lane, 0.002)  # margin 2.4 ms: the fill wait ends 4.8 ms before the deadline
    # arrivals 0.5 ms apart, within the 2 ms batch time: a fill is expected (and worth it:
    # the next arrival would find the device busy), the batch waits
    for k in range(3):
        lane.queue.push(Pending(k, 1, arrival_s=1.0 + k / 2000, deadline_s=1.010 + k / 2000))
    assert lane.queue.ready_at_s() == pytest.approx(1.008)  # the queue's own timer
    assert s.ready_at_s(lane) == pytest.approx(1.0052)  # deadline 1.010 less two margins
    assert s.pick(1.005) == (None, pytest.approx(1.0052))
    assert s.pick(1.0052)[0] is lane and s.expire(1.0052) == []
    assert s.expire(1.0075) == []  # the device thread may wake almost one margin late
