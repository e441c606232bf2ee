"""Leader election: the pure rule and the elector against an in-memory Lease, on a fake clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from stowplan.operator import leadership
from stowplan.operator.errors import ApiUnavailable
from stowplan.operator.leadership import Action, LeaseState
from stowplan.testing.clock import FakeClock
from stowplan.testing.cluster import FakeCluster
from stowplan.testing.kube import FakeLeases

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lease", "expected"),
    [
        (None, Action.CREATE),
        (LeaseState("me", NOW - timedelta(seconds=100), 15), Action.RENEW),
        (LeaseState("other", NOW - timedelta(seconds=5), 15), Action.FOLLOW),
        # 16 s since the other replica renewed a 15 s lease: it is gone
        (LeaseState("other", NOW - timedelta(seconds=16), 15), Action.TAKE_OVER),
        (LeaseState(None, None, 15), Action.TAKE_OVER),
    ],
    ids=["no-lease", "ours", "live-other", "expired-other", "released"],
)
def test_decide(lease, expected):
    assert leadership.decide(lease, "me", NOW) is expected


def _elector(read, write, who: str, clock: FakeClock) -> leadership.Elector:
    return leadership.Elector(
        read=read, write=write, namespace="ns", name="l", identity=who,
        lease_duration_s=15, renew_s=5, clock=clock,
    )  # fmt: skip


async def _spin(steps: int = 50) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)


async def test_only_one_of_two_electors_leads_and_a_standby_takes_over():
    leases, clock = FakeLeases(), FakeClock()
    a, b = (_elector(leases.read, leases.write, who, clock) for who in ("a", "b"))
    task_a = asyncio.create_task(a.run())
    await _spin()
    task_b = asyncio.create_task(b.run())
    await _spin()
    assert (a.is_leader, b.is_leader) == (True, False)
    task_a.cancel()  # the leader dies without releasing the Lease
    assert leases.state is not None and leases.state.holder == "a"
    renewed = leases.state.renewed
    while not b.is_leader:
        await _spin(1)
    # b took over only once the Lease (15 s) had expired, at its first look after that (5 s)
    assert leases.state.holder == "b"
    assert 15 < (leases.state.renewed - renewed).total_seconds() <= 15 + 5
    task_b.cancel()


async def test_an_unreachable_api_server_makes_the_leader_stand_by():
    cluster, clock = FakeCluster(), FakeClock()
    e = _elector(cluster.read_lease, cluster.write_lease, "a", clock)
    task = asyncio.create_task(e.run())
    await _spin()
    assert e.is_leader
    cluster.fail("read_lease", ApiUnavailable("connection refused"), times=1)
    seen = False
    while not seen:
        await _spin(1)
        seen = seen or not e.is_leader
    while not e.is_leader:  # and leads again once it answers
        await _spin(1)
    task.cancel()
