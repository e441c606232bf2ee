"""The fleet pass and loop against an in-memory cluster with faults injected at any call:
objects deleted between the list and the patch, an unreachable API server, a bug; the loop
never ends, backs off along the configured sequence, counts bugs, and tells liveness the truth.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from stowplan.operator import fleet
from stowplan.operator.errors import ApiUnavailable, Forbidden, NotFound
from stowplan.operator.settings import LoopSettings, OperatorSettings
from stowplan.testing.clock import FakeClock
from stowplan.testing.cluster import FakeCluster, gpunode, model

SETTINGS = OperatorSettings(loop=LoopSettings(retry_backoff_s=(1, 2, 5), resync_s=10))


def _placed(cluster: FakeCluster) -> dict[str, list[tuple[str, int]]]:
    return {
        name: [(a.model, a.replica) for a in n.spec.assignments]
        for name, n in sorted(cluster.nodes.items())
    }


async def test_a_pass_places_and_a_second_pass_writes_nothing():
    cluster = FakeCluster([model("a", replicas=2)], [gpunode("n1"), gpunode("n2")])
    first = await fleet.reconcile_once(cluster, SETTINGS, FakeClock())
    assert first.replicas_placed == 2 and first.nodes_patched >= 1
    assert sum(len(v) for v in _placed(cluster).values()) == 2
    second = await fleet.reconcile_once(cluster, SETTINGS, FakeClock())
    assert (second.nodes_patched, second.models_patched, second.gone) == (0, 0, 0)


async def test_a_gpunode_deleted_between_list_and_patch_is_skipped_and_replanned():
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1"), gpunode("n2")])
    first_target: list[str] = []

    def scale_down(node: str, assignments: list) -> None:
        if assignments and not first_target:  # the node the plan chose vanishes now
            first_target.append(node)
            del cluster.nodes[node]

    cluster.before("set_assignments", scale_down)
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    result = await loop.run_pass()
    assert result is not None and result.gone == 1
    assert loop._wake.is_set()  # asks for the next pass at once
    await loop.run_pass()
    (survivor,) = cluster.nodes
    assert survivor != first_target[0]
    assert _placed(cluster) == {survivor: [("ns/a", 0)]}
    assert cluster.models["ns/a"].status is not None
    assert cluster.models["ns/a"].status.placements[0].node == survivor


async def test_a_model_deleted_before_its_status_patch_does_not_fail_the_pass():
    cluster = FakeCluster([model("a", replicas=1), model("b", replicas=1)], [gpunode("n1")])
    cluster.before("set_model_status", lambda ns, name, _: cluster.models.pop(f"{ns}/b", None))
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    result = await loop.run_pass()
    assert result is not None and result.gone == 1 and loop.passes == 1
    await loop.run_pass()  # the next pass removes b's assignment
    assert _placed(cluster) == {"n1": [("ns/a", 0)]}


async def test_failed_passes_back_off_along_the_sequence_and_then_recover(caplog):
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1")])
    cluster.fail("list_nodes", ApiUnavailable("connection refused"), times=4)
    clock = FakeClock()
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=clock)
    with caplog.at_level(logging.ERROR):
        for _ in range(4):
            assert await loop.run_pass() is None
    assert clock.sleeps == [1, 2, 5, 5]  # the last delay repeats
    assert "reconcile pass 3 failed (ApiUnavailable" in caplog.text
    assert loop.metrics.failures.labels("api")._value.get() == 4
    assert await loop.run_pass() is not None
    assert loop.failures_in_a_row == 0 and loop.passes == 1
    cluster.fail("list_models", Forbidden("rbac", 403))
    await loop.run_pass()
    assert clock.sleeps[-1] == 1  # a new run of failures starts the sequence again


async def test_a_bug_is_logged_as_one_counted_and_survived(caplog):
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1")])
    cluster.fail("set_model_status", KeyError("surprise"))
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    with caplog.at_level(logging.ERROR):
        assert await loop.run_pass() is None
    assert "BUG in reconcile pass 1" in caplog.text and "KeyError" in caplog.text
    assert loop.metrics.failures.labels("bug")._value.get() == 1
    assert await loop.run_pass() is not None


async def test_the_loop_task_never_ends_while_every_pass_fails():
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1")])
    cluster.fail("list_models", RuntimeError("boom"), times=10**6)
    loop = fleet.FleetLoop(
        OperatorSettings(loop=LoopSettings(retry_backoff_s=(0,), debounce_s=0)),
        cluster,
        clock=FakeClock(),
    )
    task = asyncio.create_task(loop.run())
    loop.poke()
    for _ in range(200):
        await asyncio.sleep(0)
    assert loop.attempts >= 10 and not task.done()
    task.cancel()


async def test_liveness_reports_the_last_successful_pass():
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1")])
    clock = FakeClock()
    leading = [True]
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=clock, leader=lambda: leading[0])
    await loop.run_pass()
    assert loop.healthy()[0]
    cluster.fail("list_models", ApiUnavailable("down"), times=10**6)
    clock.advance(5 * 10 - 0.5)  # liveness_resyncs (5) x resync_s (10)
    assert loop.healthy()[0]
    await loop.run_pass()  # fails, then backs off 1 s: 50.5 s since the last success
    ok, what = loop.healthy()
    assert not ok and "limit 50 s" in what
    leading[0] = False
    assert loop.healthy() == (True, "standby")


def test_a_background_task_that_ends_exits_the_process(monkeypatch):
    from stowplan.operator import handlers

    codes: list[int] = []
    monkeypatch.setattr(handlers.os, "_exit", codes.append)

    async def main() -> None:
        async def ends() -> None:
            raise NotFound("gone", 404)

        task = asyncio.create_task(ends(), name="stowplan-fleet")
        task.add_done_callback(handlers._exit_if_ended)
        with pytest.raises(NotFound):
            await task
        cancelled = asyncio.create_task(asyncio.sleep(10), name="stowplan-fleet")
        cancelled.add_done_callback(handlers._exit_if_ended)
        cancelled.cancel()
        await asyncio.sleep(0)

    asyncio.run(main())
    assert codes == [handlers.EXIT_TASK_ENDED]


async def test_placeholder_pods_are_capped_so_a_huge_unplaceable_model_cannot_stall_a_pass():
    cluster = FakeCluster([model("a", replicas=500)], [gpunode("n1")])
    settings = OperatorSettings.from_env({"STOWPLAN_MAX_CAPACITY_REQUESTS": "8"})
    result = await fleet.reconcile_once(cluster, settings, FakeClock())
    assert result.replicas_unplaced >= 490
    assert len(cluster.pods) == 8 and cluster.count("create_pod") == 8


async def test_an_unchanged_fleet_costs_six_lists_and_no_request_per_node():
    cluster = FakeCluster([model("a", replicas=2)], [gpunode(f"n{i}") for i in range(20)])
    cluster.k8s_nodes = {f"n{i}": {} for i in range(10)}  # half of them have a Node
    await fleet.reconcile_once(cluster, SETTINGS, FakeClock())
    cluster.calls.clear()
    await fleet.reconcile_once(cluster, SETTINGS, FakeClock())
    assert sorted(name for name, _ in cluster.calls) == [
        "list_capacity_pods", "list_k8s_nodes", "list_model_services", "list_model_slices",
        "list_models", "list_nodes",
    ]  # fmt: skip
