"""Leader election: the pure rule and the elector against an in-memory Lease."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes.client.rest import ApiException

from stowplan.operator import leadership
from stowplan.operator.leadership import Action, LeaseState

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


class FakeLeases:
    """One Lease with optimistic concurrency, like the API server."""

    def __init__(self) -> None:
        self.state: LeaseState | None = None
        self.version = 0

    async def read(self, namespace: str, name: str):
        return self.state, (str(self.version) if self.state else None)

    async def write(self, namespace, name, *, holder, duration_s, now, resource_version, **_):
        if (resource_version or None) != (str(self.version) if self.state else None):
            raise ApiException(status=409, reason="Conflict")
        self.version += 1
        self.state = LeaseState(holder, now, duration_s)


async def test_only_one_of_two_electors_leads():
    leases = FakeLeases()
    a, b = (
        leadership.Elector(
            read=leases.read,
            write=leases.write,
            namespace="ns",
            name="l",
            identity=who,
            renew_s=0.01,
        )
        for who in ("a", "b")
    )
    tasks = [asyncio.create_task(e.run()) for e in (a, b)]
    await asyncio.sleep(0.1)
    assert [a.is_leader, b.is_leader].count(True) == 1
    for task in tasks:
        task.cancel()
