"""Leader election over a coordination.k8s.io/v1 Lease, so that operator replicas can stand by.

Every replica watches and keeps its caches warm, but only the holder of the Lease runs fleet
passes (which write). The holder renews the Lease every ``renew_s``; a replica takes over when the
holder has not renewed for ``lease_duration_s``. Writes use the Lease's resourceVersion, so two
replicas racing for an expired Lease cannot both win (the loser gets a 409 and follows).

:func:`decide` is the pure rule; :class:`Elector` applies it through the Lease reader and writer
it is given (:meth:`.kube.KubeCluster.read_lease` / ``write_lease``; ``stowplan.testing.kube.
FakeLeases`` in unit tests), on the :class:`~.clock.Clock` it is given.
Callers: :mod:`stowplan.operator.handlers` (starts the elector), :mod:`.fleet` (asks
:attr:`Elector.is_leader` before each pass).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from stowplan.operator.clock import SYSTEM, Clock
from stowplan.operator.errors import ApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseState:
    holder: str | None
    renewed: datetime | None
    duration_s: float


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # we hold it
    TAKE_OVER = "take-over"  # the holder stopped renewing
    FOLLOW = "follow"  # someone else holds a live Lease


def decide(lease: LeaseState | None, me: str, now: datetime) -> Action:
    if lease is None:
        return Action.CREATE
    if lease.holder == me:
        return Action.RENEW
    if lease.holder is None or lease.renewed is None:
        return Action.TAKE_OVER
    if now - lease.renewed > timedelta(seconds=lease.duration_s):
        return Action.TAKE_OVER
    return Action.FOLLOW


class Elector:
    """Keeps trying to hold the Lease; :attr:`is_leader` says whether passes may run."""

    def __init__(
        self,
        *,
        read: Callable[[str, str], Awaitable[tuple[LeaseState | None, str | None]]],
        write: Callable[..., Awaitable[Any]],
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_s: float = 5.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self._read, self._write = read, write
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration_s, self.renew_s = lease_duration_s, renew_s
        self._clock = clock
        self.is_leader = False
        self.became_leader = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                await self._step()
            except ApiError as err:
                if self.is_leader:
                    log.warning("lost the lease (%s); standing by", err)
                self.is_leader = False
                self.became_leader.clear()
            await self._clock.sleep(self.renew_s)

    async def _step(self) -> None:
        now = self._clock.now()
        lease, version = await self._read(self.namespace, self.name)
        action = decide(lease, self.identity, now)
        if action is Action.FOLLOW:
            if self.is_leader:
                log.warning("another replica holds the lease; standing by")
            self.is_leader = False
            self.became_leader.clear()
            return
        await self._write(
            self.namespace,
            self.name,
            holder=self.identity,
            duration_s=self.lease_duration_s,
            now=now,
            resource_version=version,
            transition=action is not Action.RENEW,
        )
        if not self.is_leader:
            log.info("leading (lease %s/%s, %s)", self.namespace, self.name, action.value)
        self.is_leader = True
        self.became_leader.set()
