"""A lone request runs on the caller's thread whenever the device thread would run it at once
(:meth:`BatchQueue.ready_alone`), for a batching lane too: at low load an AIMD or static lane
expects no fill and skips the two thread hops as batching ``none`` does; under overlapping
arrivals it queues and waits to fill as before."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from stowplan.agent.batching import AimdController, BatchQueue, FixedPolicy, Pending
from stowplan.agent.executor import DeviceExecutor
from stowplan.agent.protocol import InferenceRequest
from stowplan.agent.serving import Agent
from stowplan.testing.agent import MLP_INPUT_WIDTH


@pytest.mark.parametrize("seed", range(20))
def test_ready_alone_is_what_a_push_into_the_empty_queue_makes_ready(seed: int) -> None:
    rng = random.Random(seed)
    policy = FixedPolicy(rng.choice([1, 2, 4, 8]), rng.choice([0.0, 0.002, 0.005]))
    q: BatchQueue[None] = BatchQueue(policy)
    t = 0.0
    for _ in range(200):
        t += rng.expovariate(rng.choice([50.0, 500.0, 5000.0]))
        items = rng.choice([1, 1, 1, 2, 8])
        busy_s = rng.choice([0.0, 0.0001, 0.001, 0.01])
        if len(q) == 0:
            predicted = q.ready_alone(items, t, busy_s)
            probe: BatchQueue[None] = BatchQueue(policy)
            probe.gap_s, probe.overlap, probe._last_arrival_s = (
                q.gap_s,
                q.overlap,
                q._last_arrival_s,
            )
            probe.push(Pending(None, items, t, t + 1.0))
            assert predicted == (probe.ready_at_s(busy_s) <= t)
            if rng.random() < 0.5:  # ran without queueing: only the statistics move
                before = (q.gap_s, q.overlap)
                q.note_arrival(t)
                assert (q.gap_s, q.overlap) == (probe.gap_s, probe.overlap), before
                continue
        q.push(Pending(None, items, t, t + 1.0))
        if rng.random() < 0.6:
            q.take()


def _request() -> InferenceRequest:
    x = np.zeros((1, MLP_INPUT_WIDTH), np.float32)
    return InferenceRequest.model_validate(
        {
            "inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    )


async def test_a_lone_request_to_an_aimd_model_at_low_load_runs_on_the_callers_thread(
    agent: Agent,
) -> None:
    served = agent.get("mlp")  # the example's AIMD lane, 2 ms bounded wait
    (device,) = served.lanes
    ex = agent.executor(device)
    lane = ex.lane("mlp")
    assert lane is not None and lane.queue.policy.max_wait_s > 0
    run, observer = ex._runs["mlp"]
    threads: list[threading.Thread] = []

    def traced(batch: list[Any]) -> Sequence[Any]:
        threads.append(threading.current_thread())
        return run(batch)

    ex._runs["mlp"] = (traced, observer)
    for _ in range(5):  # one at a time: never an overlap, so no fill is ever expected
        await asyncio.wait_for(agent.predict("mlp", _request()), 10)
        await asyncio.sleep(0.005)
    assert threads[0] is ex._thread  # no batch time known yet: the device thread
    lane.est_batch_s = min(lane.est_batch_s, 0.0005)  # a contended CPU may have raised it
    await asyncio.wait_for(agent.predict("mlp", _request()), 10)
    assert threads[-1] is threading.current_thread()
    assert lane.queue.overlap < 0.1 and len(lane.queue) == 0


def test_overlapping_arrivals_keep_a_batching_lane_off_the_inline_path() -> None:
    now = [0.0]
    ex = DeviceExecutor(0, clock=lambda: now[0])
    lane = ex.add_lane("m", AimdController(16, 5.0, initial=4, max_wait_s=0.005), 100, list)
    ex._thread = threading.current_thread()  # as if started; nothing runs on another thread
    lane.est_batch_s = 0.0008  # longer than the gap: the next arrival would queue behind it
    lane.queue.overlap, lane.queue.gap_s, lane.queue._last_arrival_s = 0.5, 0.0005, -0.0005
    assert ex.try_run_inline("m", object()) is None  # a fill is expected: it must queue
    lane.queue.overlap, lane.queue.gap_s = 0.0, 0.05
    fut = ex.try_run_inline("m", "x")
    assert fut is not None and fut.result() == "x"
    assert lane.queue._last_arrival_s == 0.0  # its arrival was counted


def test_a_partial_batch_waits_to_fill_only_if_the_next_arrival_would_find_the_device_busy() -> (
    None
):
    """Overlapping arrivals every 3 ms and a 6 ms bounded wait: with batches of 0.1 ms (the
    example MLP on a CPU) the device is idle long before the next arrival, so the partial
    batch runs at once; with batches of 5 ms the next arrival would queue behind it anyway,
    so the batch waits for it as before. An unknown batch time (0) keeps the old rule."""
    q: BatchQueue[None] = BatchQueue(AimdController(64, 5.0, initial=12, max_wait_s=0.006))
    q.overlap, q.gap_s, q._last_arrival_s = 0.5, 0.003, 1.0
    q.push(Pending(None, 1, 1.0, 1.01))
    q.gap_s, q.overlap = 0.003, 0.5  # as they were: only the request matters here
    assert q.ready_at_s(0.0001) == 1.0
    assert q.ready_at_s(0.005) == pytest.approx(1.006)
    assert q.ready_at_s() == pytest.approx(1.006)


@pytest.mark.parametrize("policy", [FixedPolicy(1, 0.0), FixedPolicy(4, 0.0)])
def test_a_batch_near_its_slo_never_runs_inline_so_a_burst_behind_it_stays_visible(
    policy: FixedPolicy,
) -> None:
    """A 0.5 ms batch of a 1 ms SLO model: requests held unread behind an inline run could not
    be shed, so even a lone full batch goes through the queue; at a 10 ms SLO it runs inline."""
    ex = DeviceExecutor(0, clock=lambda: 0.0)
    ex._thread = threading.current_thread()  # as if started; nothing runs on another thread
    tight = ex.add_lane("tight", policy, 1.0, list)
    loose = ex.add_lane("loose", policy, 10.0, list)
    tight.est_batch_s = loose.est_batch_s = 0.0005
    assert ex.try_run_inline("tight", "x", items=policy.cap) is None
    fut = ex.try_run_inline("loose", "y", items=policy.cap)
    assert fut is not None and fut.result() == "y"
