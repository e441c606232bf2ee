"""The data plane's hand-off between the event loop and a device's executor thread: a caller
that gives up while its request is queued (a gRPC deadline, a cancelled task) must not stop
the executor. With ``asyncio.wrap_future`` the cancellation cancelled the executor's future,
and settling a cancelled ``concurrent.futures.Future`` raises, so the device thread died and
every later request to every model on that device waited forever."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stowplan.agent.batching import FixedPolicy
from stowplan.agent.config import BatchingConfig, ModelConfig, Policy
from stowplan.agent.executor import BatchRecord, DeviceExecutor
from stowplan.agent.protocol import InferenceRequest
from stowplan.agent.serving import Agent
from stowplan.testing.agent import MLP_INPUT_WIDTH


def _request(rows: int = 1) -> InferenceRequest:
    x = np.zeros((rows, MLP_INPUT_WIDTH), np.float32)
    return InferenceRequest.model_validate(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    )


async def test_a_caller_cancelled_while_queued_leaves_the_executor_serving(agent: Agent) -> None:
    served = agent.get("mlp")
    (device,) = served.lanes
    ex = agent.executor(device)
    release = threading.Event()
    started = threading.Event()

    def hold(batch: list[object]) -> list[object]:  # occupies the device until released
        started.set()
        release.wait(10)
        return list(batch)

    ex.add_lane("blocker", FixedPolicy(1), slo_ms=60_000, run=hold)
    try:
        blocked = ex.submit("blocker", object())
        assert await asyncio.to_thread(started.wait, 10)
        waiting = asyncio.create_task(agent.predict("mlp", _request()))
        for _ in range(500):  # until the request sits in mlp's queue behind the blocker
            if ex.queued_items("mlp"):
                break
            await asyncio.sleep(0.002)
        assert ex.queued_items("mlp") == 1
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        release.set()
        await asyncio.wrap_future(blocked)
        # the device thread ran the cancelled caller's batch and lives on
        prediction = await asyncio.wait_for(agent.predict("mlp", _request(2)), 10)
        assert prediction.outputs[prediction.names[0]].shape[0] == 2
        assert ex._thread is not None and ex._thread.is_alive()
    finally:
        release.set()
        ex.remove_lane("blocker")


async def test_a_lone_request_to_an_unbatched_model_runs_on_the_event_loops_thread(
    agent: Agent, model_dir: Path
) -> None:
    agent.load(
        ModelConfig(
            name="mlp-none",
            uri=f"file://{model_dir / 'mlp.onnx'}",
            slo_ms=2000,
            max_batch=16,
            batching=BatchingConfig(policy=Policy.NONE),
        )
    )
    (device,) = agent.get("mlp-none").lanes
    ex = agent.executor(device)
    run, observer = ex._runs["mlp-none"]
    threads: list[threading.Thread] = []

    def traced(batch: list[Any]) -> Sequence[Any]:
        threads.append(threading.current_thread())
        return run(batch)

    ex._runs["mlp-none"] = (traced, observer)
    for rows in (1, 2, 3):
        prediction = await asyncio.wait_for(agent.predict("mlp-none", _request(rows)), 10)
        assert prediction.outputs[prediction.names[0]].shape[0] == rows
    lane = ex.lane("mlp-none")
    assert lane is not None and lane.est_batch_s < 0.001  # the guard held (a fast model)
    assert threads[0] is ex._thread  # the first, with no batch time known, went to the device
    assert threads[-1] is threading.current_thread()  # later ones: no hop

    # offloaded, the same lone request goes to the device thread: its prefetch (a session
    # rebuilt from host memory, up to hundreds of ms) must not block the event loop
    assert agent.offload("mlp-none", device)
    runtime = agent.get("mlp-none").runtimes[device]
    assert not runtime.loaded
    prediction = await asyncio.wait_for(agent.predict("mlp-none", _request(1)), 10)
    assert prediction.outputs[prediction.names[0]].shape[0] == 1
    assert threads[-1] is ex._thread
    assert runtime.loaded  # prefetched back on the device thread


def test_a_caller_is_answered_only_after_its_batch_is_recorded() -> None:
    """The batch observer (the model's statistics and metrics) runs before the batch's futures
    settle, on the device thread and on the inline path: a client that has its answer and then
    asks for the statistics finds its request's batch in them (settling first let a gRPC
    ModelStatistics call see the answered request but not yet its batch)."""
    recorded: list[int] = []

    def observe(rec: BatchRecord) -> None:
        time.sleep(0.05)  # a slow observer: the caller must wait for it, not overtake it
        recorded.append(rec.items)

    ex = DeviceExecutor(0)
    lane = ex.add_lane("m", FixedPolicy(1, 0.0), slo_ms=5000, run=list, observer=observe)
    ex.start()
    try:
        seen: list[int] = []
        fut = ex.submit("m", "a")
        fut.add_done_callback(lambda _: seen.append(len(recorded)))
        assert fut.result(timeout=5) == "a" and seen == [1]  # the device thread's path
        lane.est_batch_s = 0.0001  # known and short: a lone request may run inline
        inline = ex.try_run_inline("m", "b")
        assert inline is not None and inline.done() and inline.result() == "b"
        assert len(recorded) == 2
    finally:
        ex.stop()


def test_a_failing_observer_still_answers_the_batch() -> None:
    def observe(rec: BatchRecord) -> None:
        raise RuntimeError("observer bug")

    ex = DeviceExecutor(0)
    ex.add_lane("m", FixedPolicy(1, 0.0), slo_ms=5000, run=list, observer=observe)
    ex.start()
    try:
        assert ex.submit("m", "a").result(timeout=5) == "a"
        assert ex.submit("m", "b").result(timeout=5) == "b"  # and the device thread serves on
    finally:
        ex.stop()
